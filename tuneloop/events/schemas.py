"""Versioned schemas of the events' ``data``. The CloudEvent ``type`` names the schema and its version,
so a consumer can read old events after a schema changes. A compatible change (a new optional field, which
older readers ignore) keeps the version; anything else is a v2 class beside v1, whose fields never change."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def encode_embedding(vector: np.ndarray) -> str:
    """float16 little-endian, base64: 384 floats in 1 KB instead of ~8 KB of JSON numbers."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)


class EventData(BaseModel):
    event_type: ClassVar[str]
    topic_kind: ClassVar[str]

    def key(self) -> str:
        raise NotImplementedError


class PredictionEvent(EventData):
    event_type: ClassVar[str] = "io.tuneloop.prediction.v1"
    topic_kind: ClassVar[str] = "predictions"

    request_id: str
    model_name: str
    model_version: str
    timestamp: datetime = Field(default_factory=utc_now)
    input_mode: Literal["text", "hash", "none"]
    text: str | None = None
    text_sha256: str | None = None
    text_length: int = Field(description="characters, logged whatever the privacy setting")
    label: str
    probabilities: dict[str, float]
    embedding: str | None = Field(None, description="encode_embedding() of the pooled sentence embedding")
    latency_ms: float
    truncated: bool = False

    @model_validator(mode="after")
    def _no_text_unless_logged(self) -> PredictionEvent:
        # The privacy setting is a promise: an event that says "hash" or "none" must not carry the text.
        if self.input_mode != "text" and self.text is not None:
            raise ValueError(f"input_mode {self.input_mode!r} events must not carry the text")
        return self

    def key(self) -> str:
        return self.request_id

    def embedding_vector(self) -> np.ndarray | None:
        return decode_embedding(self.embedding) if self.embedding else None


class FeedbackEvent(EventData):
    event_type: ClassVar[str] = "io.tuneloop.feedback.v1"
    topic_kind: ClassVar[str] = "feedback"

    request_id: str
    label: str
    source: str = "api"
    timestamp: datetime = Field(default_factory=utc_now)
    model_name: str | None = None
    # Where predictions are logged without their text (kafka.log_inputs hash or none), feedback may carry it,
    # so that the pair can still become a training example.
    text: str | None = None

    def key(self) -> str:
        return self.request_id


class ModelEvent(EventData):
    """A change in a model's life: a registry transition, a hot swap, drift starting or ending."""

    event_type: ClassVar[str] = "io.tuneloop.model.v1"
    topic_kind: ClassVar[str] = "model-events"

    kind: Literal["transition", "swap", "swap_failed", "drift_started", "drift_ended"]
    model_name: str | None = None
    version: str
    transition: str | None = Field(None, description="e.g. approved->production, or the drift signal")
    actor: str
    reason: str = ""
    timestamp: datetime = Field(default_factory=utc_now)
    details: dict[str, float | str] = Field(default_factory=dict)

    def key(self) -> str:
        return self.version


SCHEMAS: dict[str, type[EventData]] = {cls.event_type: cls for cls in (PredictionEvent, FeedbackEvent, ModelEvent)}
