"""The service's softmax (written out for speed, tuneloop.inference.softmax) against scipy's, extremes included."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax as scipy_softmax

from tuneloop.inference import softmax


def test_it_matches_scipy_on_ordinary_and_extreme_logits() -> None:
    rng = np.random.default_rng(0)
    logits = np.vstack([rng.normal(0, 4, (64, 3)),
                        [[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4], [88.0, 89.0, 90.0], [0.0, 0.0, 0.0]]]).astype(np.float32)

    probabilities = softmax(logits)

    assert probabilities.dtype == np.float32 and probabilities.shape == logits.shape
    assert np.isfinite(probabilities).all()  # exp(1000) would overflow without the shift
    np.testing.assert_allclose(probabilities, scipy_softmax(logits.astype(np.float64), axis=1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(probabilities[64], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(probabilities[65], [1 / 3] * 3, rtol=1e-6)


def test_it_leaves_its_input_alone() -> None:
    logits = np.array([[2.0, -1.0]], dtype=np.float32)
    softmax(logits)
    np.testing.assert_array_equal(logits, [[2.0, -1.0]])
