"""Events for the tests (importable from a child process without pytest)."""

from __future__ import annotations

import numpy as np

from tuneloop.events.schemas import FeedbackEvent, PredictionEvent, encode_embedding


def request_id(i: int) -> str:
    return f"{i:032x}"


def prediction(i: int) -> PredictionEvent:
    return PredictionEvent(request_id=request_id(i), model_name="sentiment", model_version="v1", input_mode="text",
                           text=f"text {i}", text_length=6, label=str(i % 2),
                           probabilities={"0": 0.3, "1": 0.7}, embedding=encode_embedding(np.full(8, i / 10)),
                           latency_ms=1.5)


def feedback(i: int) -> FeedbackEvent:
    return FeedbackEvent(request_id=request_id(i), label=str(i % 2), source="test")
