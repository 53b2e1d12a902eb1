"""The adapter's consume loop: predictions and feedback into the store, drift events into triggers.

One polled batch is one store transaction; the consumer commits its offsets only after the store committed,
so a crash between the two re-delivers the batch, and the store drops what it already holds. A batch the
store cannot take is read again (the consumer rewinds) after the supervisor's backoff.
"""

from __future__ import annotations

import logging

from adapter.loop import metrics
from adapter.loop.store import LabelStore
from adapter.loop.triggers import Triggers
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.schemas import ModelEvent

log = logging.getLogger(__name__)

KINDS = ["predictions", "feedback", "model-events"]


class Joiner:
    def __init__(self, consumer: EventConsumer, store: LabelStore, triggers: Triggers) -> None:
        self.consumer = consumer
        self.store = store
        self.triggers = triggers

    def step(self, poll_timeout_ms: int = 1000) -> None:
        batch = self.consumer.poll(timeout_ms=poll_timeout_ms)
        if not batch.offsets:
            return
        try:
            report = self.store.ingest(batch.events)
            for event in batch.events:
                if isinstance(event.data, ModelEvent):
                    self.triggers.on_model_event(event.data)
        except Exception:
            self.consumer.rewind(batch)  # nothing of it counts as read: it comes again
            raise
        self.consumer.commit(batch)
        metrics.PREDICTIONS.inc(report.predictions)
        for outcome, n in report.feedback.items():
            metrics.FEEDBACK.labels(outcome).inc(n)
        for delay in report.delays_s:
            metrics.FEEDBACK_DELAY.observe(max(0.0, delay))
