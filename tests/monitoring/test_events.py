"""The monitor against the event contracts (tuneloop.events): prediction events in, drift events out.

No broker here: events go through the real CloudEvents envelope (wrap → bytes → unwrap), as they would
through Kafka. tests/monitoring/test_consume_kafka.py runs the same loop on a real broker.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import numpy as np
import pytest
from prometheus_client import REGISTRY

from monitoring.consume import ConsumeLoop, EventLogDriftSink, observation_from_event
from monitoring.errors import EventDecodeError
from monitoring.monitor import DriftMonitor
from monitoring.reference import reference_from_arrays
from tests.events.poison import rejected
from tests.monitoring.stack import DOMAIN_WORDS, LABELS, only_v1, prediction_event, synthetic_rows, unusable_predictions
from tuneloop.events.consumer import Batch
from tuneloop.events.envelope import unwrap, wrap
from tuneloop.events.schemas import EventData, ModelEvent
from tuneloop.settings import MonitorSettings


def through_kafka_envelope(event: EventData, topic: str = "tuneloop.predictions"):
    envelope = wrap(event, source="tuneloop-service")
    return unwrap(envelope.value, topic=topic, partition=0, offset=0)


def test_prediction_event_maps_onto_an_observation():
    rows = synthetic_rows(1, np.random.default_rng(0))
    received = through_kafka_envelope(prediction_event(rows, 0))
    observation = observation_from_event(received.data, LABELS)
    assert observation.model_version == "v1" and observation.prediction == int(rows["predictions"][0])
    np.testing.assert_allclose(observation.probabilities, rows["probabilities"][0], rtol=1e-6)
    # float16 on the wire: close, not equal
    np.testing.assert_allclose(observation.embedding, rows["embeddings"][0], atol=2e-3, rtol=2e-3)
    assert observation.text == rows["texts"][0] and observation.text_length == len(rows["texts"][0])


def test_event_with_a_label_the_version_does_not_know_is_rejected():
    rows = synthetic_rows(1, np.random.default_rng(0))
    event = prediction_event(rows, 0).model_copy(update={"label": "neutral"})
    with pytest.raises(EventDecodeError) as rejected_as:
        observation_from_event(event, LABELS)
    assert rejected_as.value.reason == "labels"


def test_each_unusable_prediction_is_skipped_alone_and_counted():
    rng = np.random.default_rng(8)
    reference = reference_from_arrays("v1", LABELS, synthetic_rows(200, rng))
    monitor = DriftMonitor(
        MonitorSettings(window_mode="count", window_size=20, window_step=20), only_v1(reference), keep_reports=False
    )
    loop = ConsumeLoop(monitor)
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    rows = synthetic_rows(40, rng)
    unusable = unusable_predictions(rows, 0)
    for i in range(40):
        loop.handle(through_kafka_envelope(prediction_event(rows, i), topic))
        if i < len(unusable):
            loop.handle(through_kafka_envelope(unusable[i][0], topic))
    counted = monitor.metrics.registry.get_sample_value
    assert counted("tuneloop_monitor_events_total", {"outcome": "observed"}) == 40
    assert counted("tuneloop_monitor_events_total", {"outcome": "no_reference"}) == 1
    assert counted("tuneloop_monitor_events_total", {"outcome": "undecodable"}) == len(unusable) - 1
    assert rejected(topic) == dict(Counter(reason for _, reason in unusable))
    # Both windows were evaluated by every signal: no bad row got into them.
    assert counted("tuneloop_monitor_errors_total", {"kind": "signal_failed"}) == 0
    assert counted("tuneloop_drift_score", {"signal": "embedding", "model_version": "v1"}) is not None


class RecordingEventLog:
    """Stands in for tuneloop.events.producer.EventLog (not written yet): keeps what would be published."""

    def __init__(self):
        self.published: list[ModelEvent] = []

    def publish_model_event(self, event: ModelEvent) -> None:
        wrap(event, source="tuneloop-monitor")  # must be a sendable CloudEvent
        self.published.append(event)


@pytest.mark.parametrize("input_mode", ["text", "hash"])
def test_events_drive_drift_started_and_ended_model_events(input_mode):
    rng = np.random.default_rng(7)
    reference = reference_from_arrays("v1", LABELS, synthetic_rows(300, rng))
    event_log = RecordingEventLog()
    settings = MonitorSettings(window_mode="count", window_size=100, window_step=100, drift_end_after=1)
    monitor = DriftMonitor(
        settings, lambda v: reference, events=EventLogDriftSink(event_log), keep_reports=False
    )
    loop = ConsumeLoop(monitor)
    for shift, words in ((0.0, None), (1.5, DOMAIN_WORDS), (0.0, None)):
        rows = synthetic_rows(200, rng, shift, **({"words": words} if words else {}))
        for i in range(200):
            loop.handle(through_kafka_envelope(prediction_event(rows, i, input_mode=input_mode)))
    kinds = [(e.kind, e.version, e.model_name, e.actor) for e in event_log.published]
    assert kinds == [
        ("drift_started", "v1", "sentiment", "tuneloop-monitor"),
        ("drift_ended", "v1", "sentiment", "tuneloop-monitor"),
    ]
    started = event_log.published[0]
    assert "embedding" in started.transition.split(",") and started.details["embedding.score"] > 0.7
    observed = monitor.metrics.registry.get_sample_value(
        "tuneloop_monitor_events_total", {"outcome": "observed"}
    )
    assert observed == 600
    scored = {
        s.labels["signal"]
        for s in next(iter(monitor.metrics.detected.collect())).samples
        if s.labels["model_version"] == "v1"
    }
    # With hashed inputs the OOV signal has nothing to read; length still comes with every event.
    expected = {"embedding", "prediction", "confidence", "text_length"} | (
        {"text_oov"} if input_mode == "text" else set()
    )
    assert scored == expected


class ScriptedConsumer:
    """Stands in for EventConsumer: hands out given batches (an exception is raised instead), then stops."""

    def __init__(self, script: list, stop: threading.Event) -> None:
        self.script = script
        self.stop = stop
        self.topics = [f"predictions-{uuid.uuid4().hex[:8]}"]
        self.rewound: list[int] = []
        self.committed: list[list[str]] = []

    def poll(self, timeout_ms: int = 1000) -> Batch:
        if not self.script:
            self.stop.set()
            return Batch(events=[])
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def rewind(self, batch: Batch, handled: int = 0) -> None:
        self.rewound.append(handled)
        self.script.insert(0, Batch(events=batch.events[handled:]))

    def lag(self) -> dict:
        return {}  # no broker behind it

    def commit(self, batch: Batch) -> None:
        if batch.events:
            self.committed.append([e.data.request_id for e in batch.events])


def test_a_failing_step_is_supervised_and_rereads_only_what_was_not_observed():
    rng = np.random.default_rng(9)
    reference = reference_from_arrays("v1", LABELS, synthetic_rows(100, rng))
    monitor = DriftMonitor(MonitorSettings(), lambda v: reference, keep_reports=False)
    rows = synthetic_rows(3, rng)
    events = [through_kafka_envelope(prediction_event(rows, i)) for i in range(3)]
    offer, calls = monitor.offer, []

    def offer_failing_once(version, timestamp, build, model_name=None):
        calls.append(version)
        if len(calls) == 2:  # the second event, the first time: a bug, or the disk filled up
            raise RuntimeError("observing failed")
        return offer(version, timestamp, build, model_name)

    monitor.offer = offer_failing_once
    stop = threading.Event()
    consumer = ScriptedConsumer([Batch(events=list(events)), ConnectionError("broker gone")], stop)
    errors = {"thread": "tuneloop-monitor-consumer"}
    before = REGISTRY.get_sample_value("tuneloop_background_errors_total", errors) or 0
    runner = threading.Thread(target=ConsumeLoop(monitor).run, args=(consumer, stop))
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert consumer.rewound == [1]  # the first event was observed: only the other two came again
    assert consumer.committed == [["r1", "r2"]]
    counted = monitor.metrics.registry.get_sample_value
    assert counted("tuneloop_monitor_events_total", {"outcome": "observed"}) == 3
    assert REGISTRY.get_sample_value("tuneloop_background_errors_total", errors) == before + 2
