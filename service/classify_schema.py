"""The ``POST /classify`` request and response, as pydantic models: they parse and write the route's JSON, and
its OpenAPI schema is derived from them.

Kept apart from the route (service/classify.py) so that other code (the benchmark's ``batchable`` variant)
answers with the same models without importing the service.
"""

from __future__ import annotations

from pydantic import BaseModel


class ClassifyRequest(BaseModel):
    texts: list[str]


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
