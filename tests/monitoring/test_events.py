"""The monitor against the event contracts (tuneloop.events): prediction events in, drift events out.

No broker here: events go through the real CloudEvents envelope (wrap → bytes → unwrap), as they would
through Kafka. tests/monitoring/test_consume_kafka.py runs the same loop on a real broker.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.consume import ConsumeLoop, EventLogDriftSink, observation_from_event
from monitoring.errors import EventDecodeError
from monitoring.monitor import DriftMonitor
from monitoring.reference import reference_from_arrays
from tests.monitoring.stack import DOMAIN_WORDS, LABELS, prediction_event, synthetic_rows
from tuneloop.events.envelope import unwrap, wrap
from tuneloop.events.schemas import ModelEvent, PredictionEvent
from tuneloop.settings import MonitorSettings


def through_kafka_envelope(event: PredictionEvent):
    envelope = wrap(event, source="tuneloop-service")
    return unwrap(envelope.value, topic="tuneloop.predictions", partition=0, offset=0)


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
    with pytest.raises(EventDecodeError):
        observation_from_event(event, LABELS)


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
    settings = MonitorSettings(window_size=100, window_step=100, drift_end_after=1)
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
