"""The service's HTTP routes: ``/classify``, the Open Inference Protocol v2 REST routes, ``/feedback`` and
``/metrics``. Mounted at the root of the BentoML service, whose own routes (``/readyz``, ``/livez``,
``/docs.json``) match first (a mount at ``/v2`` could not answer ``GET /v2`` itself, the protocol's
server-metadata route)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import tuneloop
from service import classify, feedback, rest_oip
from service.content_type import BodyLimit
from service.errors import ServiceError, describe_validation_errors
from service.metrics import render_metrics
from tuneloop.settings import get_settings

app = FastAPI(title="tuneloop — classify and Open Inference Protocol v2", version=tuneloop.__version__,
              openapi_url="/v2/openapi.json", docs_url="/v2/docs", redoc_url=None)
app.include_router(classify.router)
app.include_router(rest_oip.router)
app.include_router(feedback.router)
# Here, not among BentoML's middlewares: every route that reads a body is this app's.
app.add_middleware(BodyLimit, max_bytes=get_settings().serving.max_body_bytes)


@app.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    headers = None if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse({"error": exc.message}, status_code=int(exc.status), headers=headers)


# FastAPI's own answer to a body it cannot decode (invalid UTF-8, say) is this, as {"detail": ...}.
UNREADABLE_BODY = "There was an error parsing the body"


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own errors (404, 405, an unreadable body) in the shape every route answers."""
    message = ("invalid request: the body is not JSON in UTF-8" if exc.detail == UNREADABLE_BODY
               else str(exc.detail))
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = describe_validation_errors(exc.errors())
    return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)


@app.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Served here when BentoML's own metrics are off (the default); with them on, BentoML's route
    answers first and includes these series too."""
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
