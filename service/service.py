"""The BentoML service: ``bentoml serve service.service:Tuneloop`` (or ``tuneloop serve``).

HTTP ``POST /classify`` is a BentoML API; the Open Inference Protocol REST routes (``/v2/…``) are a
FastAPI app mounted beside it; gRPC runs in the same process (see service/grpc). All three call one DataPlane.
"""

from __future__ import annotations

import logging

import bentoml
from starlette.responses import JSONResponse

from service import http_app
from service.classify_schema import ClassifyResponse, PredictionOut
from service.content_type import JsonBodyOnly
from service.dataplane import track_request
from service.errors import ServiceError
from service.runtime import ServingRuntime
from tuneloop.settings import get_settings

log = logging.getLogger(__name__)
SETTINGS = get_settings()




def http_error(exc: ServiceError) -> JSONResponse:
    # Returned, not raised: BentoML logs raised errors with a traceback and wraps 4xx bodies in a list.
    return JSONResponse({"error": exc.message}, status_code=int(exc.status))


@bentoml.service(
    name="tuneloop",
    workers=SETTINGS.serving.workers,
    traffic={"timeout": 60},
    # The batcher, not BentoML's concurrency limit, shapes load; let requests reach it.
    http={"port": SETTINGS.serving.port},
    logging={"access": {"enabled": SETTINGS.serving.access_log}},
    # Our own tuneloop_* series cover every request; BentoML's duplicates and its per-request
    # OpenTelemetry spans cost a measurable share of a core (bench/RESULTS.md), so they are opt-in.
    metrics={"enabled": SETTINGS.serving.bentoml_metrics},
    tracing={"excluded_urls": [] if SETTINGS.serving.tracing else ["/classify", "/v2", "/feedback"]},
)
@bentoml.asgi_app(http_app.app, path="/")
class Tuneloop:
    def __init__(self) -> None:
        self.runtime = ServingRuntime(get_settings())
        http_app.app.state.dataplane = self.runtime.dataplane
        http_app.app.state.events = self.runtime.events
        self.runtime.start()

    def __is_ready__(self) -> bool:
        return self.runtime.dataplane.ready

    @bentoml.on_shutdown
    def drain(self) -> None:
        self.runtime.stop()

    @bentoml.api(route="/classify")
    async def classify(self, texts: list[str]) -> ClassifyResponse:
        """Classify texts; each prediction has a request_id that feedback can refer to."""
        try:
            with track_request("/classify"):
                result = await self.runtime.dataplane.classify(texts)
        except ServiceError as exc:
            return http_error(exc)  # type: ignore[return-value]
        return ClassifyResponse(
            model_name=result.model_name, model_version=result.model_version,
            predictions=[PredictionOut(**p.__dict__) for p in result.predictions],
        )


Tuneloop.add_asgi_middleware(JsonBodyOnly)
