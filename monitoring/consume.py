"""Feeding the monitor from ``tuneloop.predictions``; telling ``tuneloop.model-events`` about drift.

The Kafka specifics (consumer group, dedupe by event id, commit after the event is handled) belong to the
event contracts in ``tuneloop.events``; this module only maps their events onto the monitor.

Duplicates (at-least-once delivery) and messages that are not events are dropped by ``EventConsumer``
and counted there; what reaches ``ConsumeLoop.handle`` is a schema-valid event. An event the monitor cannot
use (not a prediction, a version without a reference, labels or an embedding that do not fit it) is counted in
the same ``tuneloop_events_rejected_total{topic,reason}`` and skipped alone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from monitoring.errors import REJECTION_REASONS, EventDecodeError, ObservationRejectedError
from monitoring.monitor import DriftMonitor, Evaluation
from monitoring.window import Observation
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.rejections import count_rejected, declare
from tuneloop.events.schemas import ModelEvent, PredictionEvent
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)

ACTOR = "tuneloop-monitor"
THREAD = "tuneloop-monitor-consumer"  # its label in tuneloop_background_errors_total{thread}


def observation_from_event(event: PredictionEvent, labels: list[str]) -> Observation:
    """A prediction event as the signals need it: probabilities and class id in the version's label order."""
    try:
        probabilities = np.array([event.probabilities[name] for name in labels], dtype=np.float32)
        prediction = labels.index(event.label)
    except (KeyError, ValueError) as exc:
        raise EventDecodeError(
            event.model_version,
            "labels",
            f"prediction {event.request_id} of {event.model_version} does not fit its labels {labels}: {exc}",
        ) from None
    try:
        embedding = event.embedding_vector()
    except ValueError as exc:  # not base64, or not a whole number of float16s
        raise EventDecodeError(
            event.model_version,
            "bad_embedding",
            f"prediction {event.request_id}: undecodable embedding: {exc}",
        ) from None
    return Observation(
        model_version=event.model_version,
        embedding=embedding,
        probabilities=probabilities,
        prediction=prediction,
        text=event.text,
        timestamp=event.timestamp.timestamp(),
        text_length=event.text_length,
    )


def drift_model_event(kind: str, model_name: str | None, version: str, evaluation: Evaluation) -> ModelEvent:
    """A ``drift_started`` / ``drift_ended`` model event; ``details`` is flat (``signal.score`` …)."""
    detected = [r.signal for r in evaluation.results if r.detected]
    details: dict[str, float | str] = {"evaluation": evaluation.id, "window_rows": float(evaluation.rows)}
    for r in evaluation.results:
        details[f"{r.signal}.score"] = r.score
        details[f"{r.signal}.threshold"] = r.threshold
        details[f"{r.signal}.method"] = r.method
    summary = ", ".join(f"{r.signal} {r.score:.3f}/{r.threshold:g}" for r in evaluation.results)
    reason = (
        f"drift on {', '.join(detected)} ({summary})"
        if kind == "drift_started"
        else f"no drift on the last windows ({summary})"
    )
    return ModelEvent(
        kind=kind,  # type: ignore[arg-type]
        model_name=model_name,
        version=version,
        transition=",".join(detected),
        actor=ACTOR,
        reason=reason,
        details=details,
    )


class EventLogDriftSink:
    """Drift episodes as model events on ``tuneloop.model-events``, through the event log's producer."""

    def __init__(self, event_log: Any) -> None:
        self.event_log = event_log

    def drift_started(self, model_name: str | None, version: str, evaluation: Evaluation) -> None:
        self.event_log.publish_model_event(
            drift_model_event("drift_started", model_name, version, evaluation)
        )

    def drift_ended(self, model_name: str | None, version: str, evaluation: Evaluation) -> None:
        self.event_log.publish_model_event(drift_model_event("drift_ended", model_name, version, evaluation))


class ConsumeLoop:
    """Hands every prediction event to the monitor; a bad event is counted and skipped, never fatal."""

    def __init__(self, monitor: DriftMonitor, housekeeping_every_s: float = 60.0) -> None:
        self.monitor = monitor
        self.housekeeping_every_s = housekeeping_every_s
        self._last_housekeeping = time.monotonic()

    def handle(self, event: Any) -> None:
        """One event from the predictions topic: a ``PredictionEvent`` or an envelope holding one."""
        try:
            data, labels = self._prediction(event)
            # Decoded only if its window keeps it: a time window's reservoir passes most of a busy one over.
            self.monitor.offer(data.model_version, data.timestamp.timestamp(),
                               lambda: observation_from_event(data, labels), data.model_name)
        except ObservationRejectedError as exc:
            count_rejected(getattr(event, "topic", ""), exc.reason)
            # The monitor logs a version without a reference once per retry, not once per event.
            log.log(logging.DEBUG if exc.reason == "unknown_version" else logging.WARNING, "skipped: %s", exc)

    def _prediction(self, event: Any) -> tuple[PredictionEvent, list[str]]:
        data = getattr(event, "data", event)
        try:
            if not isinstance(data, PredictionEvent):
                raise ObservationRejectedError(
                    "", "wrong_type", f"a {type(data).__name__} on the predictions topic, not a prediction"
                )
            labels = self.monitor.labels(data.model_version)
            if labels is None:
                raise ObservationRejectedError(
                    data.model_version,
                    "unknown_version",
                    f"no reference sample for model version {data.model_version}",
                )
            return data, labels
        except ObservationRejectedError as exc:  # the monitor counts what it rejects itself in offer()
            self.monitor.metrics.rejected(exc.reason)
            raise

    def _housekeeping(self) -> None:
        if time.monotonic() - self._last_housekeeping < self.housekeeping_every_s:
            return
        self._last_housekeeping = time.monotonic()
        for version in self.monitor.forget_idle():
            log.info(
                "model version %s had no traffic for %.0f s: forgotten",
                version,
                self.monitor.settings.idle_version_s,
            )

    def step(self, consumer: EventConsumer, poll_timeout_ms: int = 1000) -> None:
        """One poll: hand each event to the monitor, then commit.

        The monitor's windows live in memory, so "persisted" means "observed": committing after the batch
        is handled means a crash re-delivers at most one batch (the consumer drops the duplicates), and a
        restart refills the windows from the committed offsets on. If handling raises (a bug, not a bad event:
        those are rejected one by one), the events not yet observed are read again on the next step.
        """
        batch = consumer.poll(timeout_ms=poll_timeout_ms)
        for handled, event in enumerate(batch.events):
            try:
                self.handle(event)
            except Exception:
                consumer.rewind(batch, handled)
                raise
        consumer.commit(batch)
        self.monitor.metrics.set_lag(consumer.lag(), time.time())
        if not batch.offsets:
            # Caught up with the topic: the clock stands in for the traffic, so a window whose traffic
            # stopped (a quiet service, a version swapped out) closes now rather than at the next prediction.
            self.monitor.close_windows(self.monitor.clock())
        self._housekeeping()

    def run(self, consumer: EventConsumer, stop: threading.Event, poll_timeout_ms: int = 1000) -> None:
        """``step`` until ``stop`` is set, in the calling thread; a failing step (broker gone, a rebalance
        during the commit) is logged, counted and retried after a backoff by its supervisor."""
        declare(consumer.topics, REJECTION_REASONS)
        SupervisedLoop(THREAD, lambda: self.step(consumer, poll_timeout_ms), stop=stop).run()
