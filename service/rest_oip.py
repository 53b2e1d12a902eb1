"""Open Inference Protocol v2 REST routes (part of service/http_app.py's app).

The infer routes read JSON bodies, and bodies in the binary tensor data extension (service/rest_binary.py
decodes them), and answer in binary when asked; both go through the one ``_infer``."""

from __future__ import annotations

import uuid

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError

import tuneloop
from service import oip, rest_binary
from service.dataplane import DataPlane, track_request, until_disconnected
from service.errors import ErrorResponse, InvalidInputError, describe_validation_errors
from service.oip import OUTPUT_NAMES, Tensor, model_metadata, server_metadata

router = APIRouter(prefix="/v2")


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class BinaryRequestInput(RequestInput):
    """An input in the JSON header of a binary tensor data extension body: its data may follow the header."""

    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None
    parameters: dict[str, Any] | None = None


class BinaryInferenceRequest(InferenceRequest):
    inputs: list[BinaryRequestInput] = Field(min_length=1)


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


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


@router.get("", response_model=dict)
async def server_meta() -> dict:
    meta = server_metadata(tuneloop.__version__)
    # The binary tensor data extension is REST's alone (service/rest_binary.py): gRPC doesn't list it.
    return meta | {"extensions": [*meta["extensions"], "binary_tensor_data"]}


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


async def _read_binary(request: Request) -> tuple[InferenceRequest, list[Tensor]]:
    """A body in the binary tensor data extension: its JSON header, and its inputs as Tensors."""
    header_length = request.headers.get(rest_binary.HEADER_LENGTH)
    header, data = rest_binary.split_body(await request.body(), header_length)
    try:
        body = BinaryInferenceRequest.model_validate(header)
    except ValidationError as exc:
        problems = describe_validation_errors(exc.errors())
        raise InvalidInputError(f"invalid inference header: {problems}") from None
    return body, rest_binary.decode_inputs(body.inputs, data)


async def _read_json(request: Request) -> tuple[InferenceRequest, list[Tensor]]:
    """A JSON body, parsed and validated by pydantic in one pass from its bytes."""
    try:
        body = InferenceRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidInputError(f"invalid request: {describe_validation_errors(exc.errors())}") from None
    return body, [Tensor(i.name, i.datatype, i.shape, i.data) for i in body.inputs]


async def _infer(request: Request) -> Response:
    """The REST side of ``oip.infer`` for both encodings, decoded here (inside the request's metrics, so a bad
    body counts). Decoding a request includes its binary output flags, checked before the work."""
    params = request.path_params
    with track_request("/v2/models/{name}/infer"):
        binary_body = rest_binary.is_binary_request(request.headers)
        body, inputs = await (_read_binary(request) if binary_body else _read_json(request))
        requested = [o.name for o in body.outputs] if body.outputs else None
        binary = rest_binary.binary_outputs(body.parameters, body.outputs, requested or OUTPUT_NAMES)
        plane = dataplane(request)
        answer = await until_disconnected(
            request.receive, oip.infer(plane, params["name"], params.get("version"), inputs, requested),
            watch=plane.backlogged)
        header = {"model_name": answer.model_name, "model_version": answer.model_version,
                  "id": body.id or uuid.uuid4().hex}
        if binary:
            content, header_length = rest_binary.encode_response(header, answer.outputs, binary)
            return Response(content, media_type=rest_binary.OCTET_STREAM,
                            headers={"Inference-Header-Content-Length": str(header_length)})
        response = InferenceResponse(**header, outputs=[
            ResponseOutput(name=t.name, shape=t.shape, datatype=t.datatype, data=t.data)
            for t in answer.outputs])
        return Response(response.model_dump_json(), media_type="application/json")


class InferRoute(APIRoute):
    """An infer route whose endpoint FastAPI documents (its body and response models) but does not run: the
    handler reads the body itself, JSON or in the binary tensor data extension (a body with
    Inference-Header-Content-Length, or an octet stream), as service/classify.py's route does. FastAPI's own
    path parsed the JSON, validated the dict, solved the dependencies and validated the answer again before
    dumping it, at about twice the CPU of the whole route (bench/RESULTS.md)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _infer


async def infer(request: Request, name: str, body: InferenceRequest) -> InferenceResponse:
    """Documented by FastAPI, run by ``InferRoute`` (``_infer``)."""
    raise NotImplementedError


async def infer_version(request: Request, name: str, version: str, body: InferenceRequest) -> InferenceResponse:
    """Documented by FastAPI, run by ``InferRoute`` (``_infer``)."""
    raise NotImplementedError


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_INFER_DESCRIPTION = """Classify the texts of one BYTES input tensor (shape `[n]` or `[n, 1]`).

The body is JSON, or uses the Open Inference Protocol's **binary tensor data extension** (what Triton's
and KServe's REST clients send by default): the `Inference-Header-Content-Length` header gives the length
of the JSON inference header that starts the body; the binary data of each input that has
`parameters.binary_data_size` follows it, in input order (a BYTES element is a 4-byte little-endian length,
then its bytes). Outputs come back in binary when asked, by an output's `parameters.binary_data: true` or
the request's `parameters.binary_data_output: true`: then the response is `application/octet-stream`, a
JSON header of `Inference-Header-Content-Length` bytes whose binary outputs have
`parameters.binary_data_size`, then their bytes in output order (FP32 as little-endian float32)."""
_INFER_RESPONSES = {
    200: {"content": {"application/octet-stream": _BINARY},
          "description": "JSON, or the binary tensor data extension when binary outputs were asked for"},
    400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
_INFER_OPENAPI = {
    "parameters": [{
        "name": "Inference-Header-Content-Length", "in": "header", "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "binary tensor data extension: the length of the JSON header that starts the body",
    }],
    "requestBody": {"content": {"application/octet-stream": _BINARY}},
}

# strict_content_type=False: a JSON body without a Content-Type is read as JSON (tritonclient.http sends
# none with JSON inputs), as content_type.JsonBodyOnly already lets it through.
for _path, _endpoint in [("/models/{name}/infer", infer),
                         ("/models/{name}/versions/{version}/infer", infer_version)]:
    router.add_api_route(_path, _endpoint, methods=["POST"], response_model=InferenceResponse,
                         responses=_INFER_RESPONSES, description=_INFER_DESCRIPTION,
                         openapi_extra=_INFER_OPENAPI, route_class_override=InferRoute,
                         strict_content_type=False)
