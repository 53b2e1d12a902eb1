"""Labelled traffic for the adapter's tests: prediction and feedback events as the service logs them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from adapter.loop.store import LabelStore
from tuneloop.events.envelope import ReceivedEvent
from tuneloop.events.schemas import FeedbackEvent, PredictionEvent


def received(data) -> ReceivedEvent:
    return ReceivedEvent(event_id=uuid.uuid4().hex, event_type=data.event_type, source="test", data=data,
                         topic="t", partition=0, offset=0)


def labelled_pair(text: str, label: str, version: str = "v1", predicted: str = "1",
                  at: datetime | None = None) -> list[ReceivedEvent]:
    """A prediction of ``text`` by ``version``, then its feedback saying the true ``label``."""
    request_id, at = uuid.uuid4().hex, at or datetime.now(timezone.utc)
    return [received(PredictionEvent(request_id=request_id, model_name="sentiment", model_version=version,
                                     input_mode="text", text=text, text_length=len(text), label=predicted,
                                     probabilities={"0": 0.5, "1": 0.5}, latency_ms=1.0, timestamp=at)),
            received(FeedbackEvent(request_id=request_id, label=label, timestamp=at + timedelta(seconds=1)))]


def feed(store: LabelStore, rows: list[tuple[str, str]], version: str = "v1") -> None:
    """Store ``rows`` (text, true label) as examples, one second apart, in order."""
    start = datetime.now(timezone.utc) - timedelta(seconds=len(rows) + 5)
    events = []
    for i, (text, label) in enumerate(rows):
        events += labelled_pair(text, label, version, at=start + timedelta(seconds=i))
    store.ingest(events)
