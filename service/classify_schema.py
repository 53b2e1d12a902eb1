"""The ``POST /classify`` response, as pydantic models: BentoML derives the route's OpenAPI schema from them.

Kept apart from service/service.py, which builds the BentoML service when imported, so that other code (the
benchmark's ``batchable`` variant) answers with the same models without starting a service.
"""

from __future__ import annotations

from pydantic import BaseModel


class PredictionOut(BaseModel):
    request_id: str
    label: str
    score: float
    probabilities: dict[str, float]
    truncated: bool


class ClassifyResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[PredictionOut]
