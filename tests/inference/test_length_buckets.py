"""Length buckets: how a batch is cut into session runs, and that each provider gets its own run cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuneloop.inference import RUN_OVERHEAD_TOKENS, OnnxTextClassifier, plan_length_buckets
from tuneloop.registry import Registry


def padded_tokens(lengths: np.ndarray, buckets: list[np.ndarray]) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in buckets)


def test_every_text_lands_in_exactly_one_bucket_of_at_most_max_batch() -> None:
    lengths = np.random.default_rng(0).integers(3, 128, size=75)
    buckets = plan_length_buckets(lengths, max_batch=32, run_overhead_tokens=16)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(75))
    assert all(1 <= len(b) <= 32 for b in buckets)


def test_a_cheap_run_splits_short_from_long_texts_to_save_padding() -> None:
    lengths = np.array([5] * 24 + [120] * 8)
    buckets = plan_length_buckets(lengths, max_batch=32, run_overhead_tokens=16)
    assert len(buckets) == 2
    assert padded_tokens(lengths, buckets) == 24 * 5 + 8 * 120  # no short text padded to 120


def test_an_expensive_run_keeps_the_batch_whole() -> None:
    lengths = np.array([5] * 24 + [120] * 8)
    buckets = plan_length_buckets(lengths, max_batch=32, run_overhead_tokens=RUN_OVERHEAD_TOKENS["CUDAExecutionProvider"])
    assert len(buckets) == 1


def test_the_gpu_figure_never_splits_a_full_batch_at_the_token_limit() -> None:
    # The worst case for not splitting: one text at the 128-token limit among 31 of one token.
    lengths = np.array([1] * 31 + [128])
    cuda = RUN_OVERHEAD_TOKENS["CUDAExecutionProvider"]
    assert len(plan_length_buckets(lengths, max_batch=32, run_overhead_tokens=cuda)) == 1


def cheapest_plan_cost(lengths: np.ndarray, max_batch: int, overhead: int) -> float:
    """The optimum by the plain quadratic recursion over the sorted lengths, written independently."""
    ordered = sorted(int(n) for n in lengths)
    best = [0.0] + [float("inf")] * len(ordered)
    for end in range(1, len(ordered) + 1):
        for start in range(max(0, end - max_batch), end):
            best[end] = min(best[end], best[start] + overhead + (end - start) * ordered[end - 1])
    return best[-1]


def test_the_plan_costs_the_optimum_whatever_the_mix_and_overhead() -> None:
    rng = np.random.default_rng(1)
    for trial in range(40):
        lengths = rng.integers(1, 129, size=int(rng.integers(1, 90)))
        max_batch = int(rng.choice([1, 4, 32, 256]))
        overhead = int(rng.choice([0, 16, 200, 4096]))
        buckets = plan_length_buckets(lengths, max_batch=max_batch, run_overhead_tokens=overhead)
        assert all(len(b) <= max_batch for b in buckets), trial
        cost = len(buckets) * overhead + padded_tokens(lengths, buckets)
        assert cost == cheapest_plan_cost(lengths, max_batch, overhead), trial


def test_a_gpu_sized_batch_is_one_run_and_an_empty_one_none() -> None:
    lengths = np.random.default_rng(2).integers(3, 128, size=256)
    cuda = RUN_OVERHEAD_TOKENS["CUDAExecutionProvider"]
    assert len(plan_length_buckets(lengths, max_batch=256, run_overhead_tokens=cuda)) <= 2
    # Padding worth less than one more run (at most 256 × 15 tokens against 4096): one run, the search skipped.
    narrow = np.random.default_rng(3).integers(100, 116, size=256)
    assert [sorted(b.tolist()) for b in plan_length_buckets(narrow, max_batch=256, run_overhead_tokens=cuda)] == [
        list(range(256))]
    assert plan_length_buckets(np.array([], dtype=np.int64), max_batch=32) == []


def test_a_session_plans_with_its_own_providers_figure_unless_told(served_registry: Path) -> None:
    registry = Registry(served_registry)
    opened = registry.open_version(registry.production())
    clf = OnnxTextClassifier(opened.onnx_path(), opened.tokenizer_dir, max_length=32,
                             providers=["CPUExecutionProvider"])
    assert clf.run_overhead_tokens == RUN_OVERHEAD_TOKENS["CPUExecutionProvider"]
    tokens = clf.tokenize(["ok"] * 12 + ["a much longer sentence that fills most of the thirty two tokens"] * 4)
    assert len(clf.plan_buckets(tokens, max_batch=32)) == 2
    assert len(clf.plan_buckets(tokens, max_batch=32, run_overhead_tokens=10_000)) == 1
