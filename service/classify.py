"""``POST /classify`` ``{"texts": [...]}``: the project's own HTTP API, one prediction per text.

A route of the mounted FastAPI app, not a BentoML API: BentoML's API layer cost more CPU per request. FastAPI
documents the route (service/http_app.py's spec, merged into BentoML's ``/docs.json``) but does not run it:
the endpoint takes the raw request and answers a finished response. pydantic parses and validates the body
in one pass from bytes and writes the answer with ``model_dump_json``, where FastAPI would ``json.loads`` the
body, validate the dict, solve the route's dependencies and check the answer again before dumping it. Through
BentoML's whole ASGI app, in process: 185 µs of CPU a request as a BentoML API, 170 as a FastAPI route with a
body model, 121 as this (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from service.classify_schema import ClassifyRequest, ClassifyResponse, PredictionOut
from service.dataplane import DataPlane, track_request, until_disconnected
from service.errors import ErrorResponse, InvalidInputError, describe_validation_errors


class PlainRoute(APIRoute):
    """A route whose endpoint is its own handler: ``Request`` in, ``Response`` out, nothing in between."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


router = APIRouter(route_class=PlainRoute)


@router.post(
    "/classify", response_model=ClassifyResponse,
    responses={status: {"model": ErrorResponse} for status in (400, 413, 415, 503)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": ClassifyRequest.model_json_schema()}}}},
)
async def classify(request: Request) -> Response:
    """Classify texts; each prediction has a request_id that feedback can refer to."""
    plane: DataPlane = request.app.state.dataplane
    with track_request("/classify"):
        try:
            texts = ClassifyRequest.model_validate_json(await request.body()).texts
        except ValidationError as exc:
            raise InvalidInputError(f"invalid request: {describe_validation_errors(exc.errors())}") from None
        result = await until_disconnected(request.receive, plane.classify(texts), watch=plane.backlogged)
    answer = ClassifyResponse(model_name=result.model_name, model_version=result.model_version,
                              predictions=[PredictionOut(**p.__dict__) for p in result.predictions])
    return Response(answer.model_dump_json(), media_type="application/json")
