"""The adapter's consume loop on a real broker: predictions and feedback in either order become examples,
drift events become triggers, and offsets are committed only after the store committed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from adapter.loop.joiner import KINDS, Joiner
from adapter.loop.policy import TriggerPolicy
from adapter.loop.store import LabelStore
from adapter.loop.triggers import Triggers
from tests.events.poison import send_raw
from tests.fixtures.broker import isolated_settings
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.envelope import wrap
from tuneloop.events.schemas import FeedbackEvent, ModelEvent, PredictionEvent


def prediction(request_id: str, text: str | None = "the food was cold") -> PredictionEvent:
    return PredictionEvent(request_id=request_id, model_name="sentiment", model_version="v1",
                           input_mode="text" if text else "none", text=text, text_length=17, label="1",
                           probabilities={"0": 0.2, "1": 0.8}, latency_ms=2.0)


def drain(joiner: Joiner, until, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        joiner.step(poll_timeout_ms=300)
    assert until()


@pytest.fixture
def kafka(kafka_broker, tmp_path: Path):
    return isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool", partitions=1)


def test_events_in_either_order_become_examples_and_drift_a_trigger(kafka, tmp_path: Path) -> None:
    ids = [uuid.uuid4().hex for _ in range(4)]
    feedback_first = wrap(FeedbackEvent(request_id=ids[1], label="0"), "test")
    # ids[0]: prediction then feedback; ids[1]: feedback first; ids[2]: no text anywhere (unusable);
    # ids[3]: feedback with its text, for a prediction that never comes (it waits, then expires).
    send_raw(kafka, [wrap(prediction(ids[0]), "test").value], topic=kafka.predictions_topic)
    send_raw(kafka, [wrap(FeedbackEvent(request_id=ids[0], label="0"), "test").value, feedback_first.value],
             topic=kafka.feedback_topic)
    send_raw(kafka, [wrap(prediction(ids[1]), "test").value, wrap(prediction(ids[2], text=None), "test").value],
             topic=kafka.predictions_topic)
    send_raw(kafka, [wrap(FeedbackEvent(request_id=ids[2], label="1"), "test").value,
                     wrap(FeedbackEvent(request_id=ids[3], label="1", text="great staff"), "test").value],
             topic=kafka.feedback_topic)
    send_raw(kafka, [wrap(ModelEvent(kind="drift_started", version="v1", transition="embedding",
                                     actor="tuneloop-monitor"), "test").value], topic=kafka.model_events_topic)
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    consumer = EventConsumer(kafka, KINDS, group_id="adapter-test")
    joiner = Joiner(consumer, store, Triggers(store, TriggerPolicy()))
    try:
        drain(joiner, lambda: len(store.examples()) == 2 and store.waiting_triggers())
    finally:
        consumer.close()
    assert sorted(e.text for e in store.examples()) == ["the food was cold", "the food was cold"]
    assert [t.kind for t in store.waiting_triggers()] == ["drift_event"]
    # Read again from the start by a new group (a replayed topic, a consumer that lost its offsets): the store
    # keeps what it holds once.
    again = EventConsumer(kafka, KINDS, group_id="adapter-test-again")
    reread = Joiner(again, store, Triggers(store, TriggerPolicy(on_drift=False)))
    try:
        for _ in range(6):
            reread.step(poll_timeout_ms=500)
    finally:
        again.close()
    assert len(store.examples()) == 2


def test_offsets_are_committed_only_after_the_store_committed(kafka, tmp_path: Path, monkeypatch) -> None:
    ids = [uuid.uuid4().hex for _ in range(5)]
    send_raw(kafka, [wrap(prediction(i), "test").value for i in ids], topic=kafka.predictions_topic)
    send_raw(kafka, [wrap(FeedbackEvent(request_id=i, label="0"), "test").value for i in ids],
             topic=kafka.feedback_topic)
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    real, failures = store.ingest, [1]

    def flaky(events):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("database is locked")
        return real(events)

    monkeypatch.setattr(store, "ingest", flaky)
    consumer = EventConsumer(kafka, KINDS, group_id="adapter-commit-test")
    joiner = Joiner(consumer, store, Triggers(store, TriggerPolicy()))
    try:
        deadline = time.monotonic() + 60
        while failures[0] and time.monotonic() < deadline:
            try:
                joiner.step(poll_timeout_ms=300)
            except RuntimeError:
                pass  # the supervisor's job in the service: log, count, back off, step again
        drain(joiner, lambda: len(store.examples()) == len(ids))
    finally:
        consumer.close()
