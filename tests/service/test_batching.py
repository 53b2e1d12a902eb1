"""The micro-batcher answers each request as soon as its own texts have run, rows in the order it sent them."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from scipy.special import softmax

from service.batching import BatchLimits, BatchOutput, MicroBatcher
from service.errors import OverloadedError
from service.model import ServedModel, load_served_model
from tuneloop.registry import Registry
from tuneloop.settings import ServingSettings, load_settings

SHORT = "fine"
LONG = "the battery lasted two days, the screen cracked in a week and support never answered my mails " * 3


@pytest.fixture(scope="module")
def served(served_registry: Path) -> ServedModel:
    return load_served_model(Registry(served_registry), "v1", load_settings(registry=str(served_registry)).serving)


def one_batch(served: ServedModel, *requests: list[str]) -> list[Future]:
    """Submit every request before the worker starts, so that they meet in one batch."""
    batcher = MicroBatcher(lambda: served, ServingSettings())
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
    batcher = MicroBatcher(lambda: served, ServingSettings())
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
    batcher = MicroBatcher(lambda: served, ServingSettings())
    batcher.start()
    with pytest.raises(ValueError, match="no texts"):
        batcher.submit([]).result(timeout=5)
    batcher.stop()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def texts_run(served: ServedModel) -> float:
    """Texts the session has run so far (every run observes its size)."""
    return sample("tuneloop_batch_size_sum", {"model_version": served.version})


def test_a_full_queue_refuses_at_once_and_counts_it(served: ServedModel) -> None:
    batcher = MicroBatcher(lambda: served, ServingSettings(max_queue_texts=3, retry_after_s=2))
    rejected = sample("tuneloop_requests_rejected_total", {"reason": "queue_full"})
    admitted = [batcher.submit([SHORT, SHORT]), batcher.submit([SHORT])]  # not started: they wait
    assert batcher.queued_texts == 3
    with pytest.raises(OverloadedError, match="3 texts are waiting for the model") as refused:
        batcher.submit([SHORT])
    error = refused.value
    assert (error.status, error.grpc_code, error.retry_after_s) == (503, "RESOURCE_EXHAUSTED", 2)
    assert sample("tuneloop_requests_rejected_total", {"reason": "queue_full"}) == rejected + 1
    assert sample("tuneloop_queued_texts") == 3
    batcher.start()
    assert [len(f.result(timeout=60).probabilities) for f in admitted] == [2, 1]
    assert batcher.queued_texts == 0
    batcher.stop()


def test_an_empty_queue_takes_a_request_larger_than_the_limit(served: ServedModel) -> None:
    """Else a request over the limit would be told to retry, forever."""
    batcher = MicroBatcher(lambda: served, ServingSettings(max_queue_texts=1))
    future = batcher.submit([SHORT, SHORT, SHORT])
    batcher.start()
    assert len(future.result(timeout=60).probabilities) == 3
    batcher.stop()


def test_a_cancelled_request_never_reaches_the_model(served: ServedModel) -> None:
    batcher = MicroBatcher(lambda: served, ServingSettings())
    gone, kept = batcher.submit([LONG, SHORT]), batcher.submit([SHORT])
    assert gone.cancel()  # what a disconnected client or a passed deadline does to its request
    runs_before, dropped = texts_run(served), sample("tuneloop_requests_dropped_total")
    batcher.start()
    assert len(kept.result(timeout=60).probabilities) == 1
    batcher.stop()
    assert texts_run(served) - runs_before == 1  # only the kept request's text ran
    assert sample("tuneloop_requests_dropped_total") == dropped + 1
    assert batcher.queued_texts == 0


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on(served: ServedModel) -> None:
    """The worker is a supervised loop: the failure is logged and counted, the next batch runs."""
    failures = iter([RuntimeError("the session broke")])

    def current() -> ServedModel:
        for exc in failures:
            raise exc
        return served

    errors = sample("tuneloop_background_errors_total", {"thread": "tuneloop-batcher"})
    batcher = MicroBatcher(current, ServingSettings())
    batcher.start()
    with pytest.raises(RuntimeError, match="the session broke"):
        batcher.submit([SHORT]).result(timeout=60)
    assert len(batcher.submit([SHORT]).result(timeout=60).probabilities) == 1
    batcher.stop()
    assert sample("tuneloop_background_errors_total", {"thread": "tuneloop-batcher"}) == errors + 1


def test_stop_answers_what_was_queued_before_it(served: ServedModel) -> None:
    batcher = MicroBatcher(lambda: served, ServingSettings(max_batch_size=2))
    futures = [batcher.submit([SHORT]) for _ in range(5)]
    batcher.start()
    batcher.stop()
    assert all(len(f.result(timeout=0).probabilities) == 1 for f in futures)


def batches_and_texts(served: ServedModel) -> tuple[float, float]:
    return session_runs(served), texts_run(served)


def test_a_request_alone_with_the_model_never_waits_for_a_batching_window(served: ServedModel) -> None:
    """A minute-long window would hold a lone request for a minute if the batcher waited for company."""
    batcher = MicroBatcher(lambda: served, ServingSettings(max_latency_ms=60_000))
    batcher.start()
    for _ in range(3):
        assert len(batcher.submit([SHORT]).result(timeout=20).probabilities) == 1
    batcher.stop()


def test_after_a_burst_a_batch_waits_for_the_company_the_load_has_been_sending(served: ServedModel) -> None:
    batcher = MicroBatcher(lambda: served, ServingSettings(max_latency_ms=60_000))
    burst = [batcher.submit([SHORT]) for _ in range(8)]  # queued before the worker starts: one batch of 8
    batcher.start()
    for future in burst:
        future.result(timeout=20)
    runs, texts = batches_and_texts(served)
    # Batches of 1 then 8: the next one expects round((1 + 8) / 2) = 4 texts, and waits (up to the window)
    # for them.
    first = batcher.submit([SHORT])
    later: list[Future] = []
    threading.Timer(0.3, lambda: later.extend(batcher.submit([SHORT]) for _ in range(3))).start()
    first.result(timeout=20)
    assert len(later) == 3 and all(f.result(timeout=20) for f in later)
    assert batches_and_texts(served) == (runs + 1, texts + 4)  # one run held all four
    batcher.stop()


def test_the_batch_cap_and_the_queue_follow_the_provider_unless_set() -> None:
    def limits(settings: ServingSettings, provider: str) -> tuple[int, int]:
        found = BatchLimits.for_provider(settings, provider)
        assert found.provider == provider
        return found.max_batch_texts, found.max_queue_texts

    defaults = ServingSettings()
    assert limits(defaults, "CPUExecutionProvider") == (32, 256)
    assert limits(defaults, "CUDAExecutionProvider") == (256, 2048)
    assert limits(defaults, "SomeNewExecutionProvider") == (32, 256)
    assert limits(ServingSettings(max_batch_size=64, max_queue_texts=100), "CUDAExecutionProvider") == (64, 100)
    assert limits(ServingSettings(max_batch_size=8), "CUDAExecutionProvider") == (8, 64)