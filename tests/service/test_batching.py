"""The micro-batcher answers each request as soon as its own texts have run, rows in the order it sent them."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from scipy.special import softmax

from service.batching import BatchOutput, MicroBatcher
from service.model import ServedModel, load_served_model
from tuneloop.registry import Registry
from tuneloop.settings import load_settings

SHORT = "fine"
LONG = "the battery lasted two days, the screen cracked in a week and support never answered my mails " * 3


@pytest.fixture(scope="module")
def served(served_registry: Path) -> ServedModel:
    return load_served_model(Registry(served_registry), "v1", load_settings(registry=str(served_registry)).serving)


def one_batch(served: ServedModel, *requests: list[str]) -> list[Future]:
    """Submit every request before the worker starts, so that they meet in one batch."""
    batcher = MicroBatcher(lambda: served)
    futures = [batcher.submit(texts) for texts in requests]
    batcher.start()
    for future in futures:
        future.result(timeout=60)
    batcher.stop()
    return futures


def test_the_two_lengths_run_as_two_buckets(served: ServedModel) -> None:
    """The premise of the next test: the planner cuts a short and a long text apart."""
    tokens = served.classifier.tokenize([SHORT, LONG])
    assert len(served.classifier.plan_buckets(tokens, 32)) == 2


def session_runs(served: ServedModel) -> float:
    return REGISTRY.get_sample_value("tuneloop_batch_size_count", {"model_version": served.version}) or 0.0


def test_a_short_request_is_answered_before_the_long_bucket_runs(served: ServedModel) -> None:
    batcher = MicroBatcher(lambda: served)
    short, long = batcher.submit([SHORT]), batcher.submit([LONG])
    # Done-callbacks run in the thread that sets the result: this reads the session runs made so far at
    # the moment the short request is answered.
    runs_before = session_runs(served)
    runs_when_short_answered: list[float] = []
    short.add_done_callback(lambda _: runs_when_short_answered.append(session_runs(served) - runs_before))
    batcher.start()
    short.result(timeout=60), long.result(timeout=60)
    batcher.stop()
    assert runs_when_short_answered == [1]
    assert session_runs(served) - runs_before == 2


def test_a_request_spread_over_buckets_gets_its_rows_in_its_order(served: ServedModel) -> None:
    mixed = [LONG, SHORT, "not what I expected", LONG[:120]]
    other = ["works as described", SHORT]
    answers = [f.result() for f in one_batch(served, mixed, other)]
    for texts, answer in zip((mixed, other), answers):
        assert isinstance(answer, BatchOutput) and answer.model is served
        logits, embeddings = served.classifier.predict(texts)
        np.testing.assert_allclose(answer.probabilities, softmax(logits.astype(np.float64), axis=1), atol=1e-5)
        np.testing.assert_allclose(answer.embeddings, embeddings, atol=1e-5)
        assert answer.truncated == served.classifier.tokenize(texts).truncated


def test_a_request_without_texts_is_refused_not_left_waiting(served: ServedModel) -> None:
    batcher = MicroBatcher(lambda: served)
    batcher.start()
    with pytest.raises(ValueError, match="no texts"):
        batcher.submit([]).result(timeout=5)
    batcher.stop()
