"""Open Inference Protocol v2 REST routes (part of service/http_app.py's app)."""

from __future__ import annotations

import uuid

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import tuneloop
from service.dataplane import DataPlane, track_request
from service.errors import ModelNotReadyError
from service.oip import Tensor, check_requested_outputs, model_metadata, output_tensors, server_metadata, texts_from_inputs

router = APIRouter(prefix="/v2")


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None
    parameters: dict[str, Any] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    # The request's id, or one of ours when it had none: KServe's client refuses a response without an id.
    id: str
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


@router.get("", response_model=dict)
async def server_meta() -> dict:
    return server_metadata(tuneloop.__version__)


@router.get("/health/live", responses={200: {"model": dict}})
async def live(request: Request) -> dict:
    return {"live": dataplane(request).live}


@router.get("/health/ready", responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> JSONResponse:
    is_ready = dataplane(request).ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}", responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
@router.get("/models/{name}/versions/{version}", responses={404: {"model": ErrorResponse}})
async def model_meta(request: Request, name: str, version: str | None = None) -> dict:
    return model_metadata(dataplane(request).model(name, version))


@router.get("/models/{name}/ready", responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
@router.get("/models/{name}/versions/{version}/ready", responses={404: {"model": ErrorResponse}})
async def model_ready(request: Request, name: str, version: str | None = None) -> dict:
    served = dataplane(request).model(name, version)
    return {"name": served.model_name, "ready": True}


async def _infer(request: Request, name: str, version: str | None, body: InferenceRequest) -> InferenceResponse:
    plane = dataplane(request)
    route = "/v2/models/{name}/infer"
    with track_request(route):
        plane.model(name, version)  # 404 before any work for an unknown name or version
        texts = texts_from_inputs([Tensor(i.name, i.datatype, i.shape, i.data) for i in body.inputs])
        requested = [o.name for o in body.outputs] if body.outputs else None
        check_requested_outputs(requested)  # fail before the work, not after
        result = await plane.classify(texts)
        if version is not None and result.model_version != version:
            # A swap landed between the check and the batch: say so rather than answer for another version.
            raise ModelNotReadyError(f"version {version} was swapped out while the request waited; retry")
        outputs = [ResponseOutput(name=t.name, shape=t.shape, datatype=t.datatype, data=t.data)
                   for t in output_tensors(result, requested)]
        return InferenceResponse(model_name=result.model_name, model_version=result.model_version,
                                 id=body.id or uuid.uuid4().hex, outputs=outputs)


_ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
           503: {"model": ErrorResponse}}


@router.post("/models/{name}/infer", responses=_ERRORS)
async def infer(request: Request, name: str, body: InferenceRequest) -> InferenceResponse:
    return await _infer(request, name, None, body)


@router.post("/models/{name}/versions/{version}/infer", responses=_ERRORS)
async def infer_version(request: Request, name: str, version: str, body: InferenceRequest) -> InferenceResponse:
    return await _infer(request, name, version, body)
