"""The real thing: fine-tune the pretrained MiniLM-L6 on the real amazon sentences."""

from __future__ import annotations

import pytest

from adapter.pipeline import train_and_register
from adapter.training.data import load_labelled_data, load_test_set
from adapter.training.hyperparameters import Hyperparameters
from tests.conftest import AMAZON, YELP
from tuneloop.registry import Registry


@pytest.mark.slow
def test_minilm_on_amazon_reaches_085_test_accuracy(settings) -> None:
    data = load_labelled_data(AMAZON)
    yelp = load_test_set(YELP, data.label_names)
    outcome = train_and_register(data, Hyperparameters(epochs=3, max_length=64), settings,
                                 extra_test_sets={"yelp": yelp}, show_progress=False)
    card = outcome.card
    assert card.base_model == "minilm"
    assert card.metrics["test"].accuracy >= 0.85, card.metrics["test"]
    assert card.metrics["yelp"].accuracy >= 0.75  # another domain: lower, far above chance
    assert card.parity["fp32"].passed and card.parity["fp32"].label_agreement == 1.0
    assert card.embedding_dim == 384
    Registry(settings.registry).verify(outcome.version)
