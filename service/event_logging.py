"""What the service writes to the event log: one prediction event per classified text, feedback,
and model events for hot swaps. The EventLog never blocks: these run on the request path."""

from __future__ import annotations

import hashlib

from service.dataplane import ClassifyResult
from tuneloop.events.queueing import QueuedPublisher
from tuneloop.events.schemas import ModelEvent, PredictionEvent, encode_embedding
from tuneloop.settings import KafkaSettings


class PredictionLogger:
    """A DataPlane listener turning each classification into prediction events."""

    def __init__(self, events: QueuedPublisher, settings: KafkaSettings) -> None:
        self.events = events
        self.settings = settings

    def __call__(self, texts: list[str], result: ClassifyResult) -> None:
        mode = self.settings.log_inputs
        for text, prediction, embedding in zip(texts, result.predictions, result.embeddings):
            self.events.publish_prediction(PredictionEvent(
                request_id=prediction.request_id, model_name=result.model_name,
                model_version=result.model_version, input_mode=mode,
                text=text if mode == "text" else None,
                text_sha256=hashlib.sha256(text.encode()).hexdigest() if mode == "hash" else None,
                text_length=len(text), label=prediction.label, probabilities=prediction.probabilities,
                embedding=encode_embedding(embedding) if self.settings.log_embeddings else None,
                latency_ms=result.latency_ms, truncated=prediction.truncated,
            ))


def swap_event(events: QueuedPublisher, kind: str, model_name: str | None, version: str, reason: str) -> None:
    events.publish_model_event(ModelEvent(kind=kind, model_name=model_name, version=version,
                                          actor="tuneloop-service", reason=reason))
