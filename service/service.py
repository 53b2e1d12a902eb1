"""The BentoML service: ``bentoml serve service.service:Tuneloop`` (or ``tuneloop serve``).

BentoML hosts the process: lifecycle, readiness (``/readyz``, ``/livez``), workers. Every HTTP route,
``POST /classify`` included, is in the FastAPI app mounted at its root (service/http_app.py), where a request
costs less CPU than through a BentoML API (bench/RESULTS.md). gRPC runs in the same process (see service/grpc).
All of them call one DataPlane.
"""

from __future__ import annotations

import logging

import bentoml

from service import http_app
from service.content_type import JsonBodyOnly
from service.runtime import ServingRuntime
from tuneloop.settings import get_settings

log = logging.getLogger(__name__)
SETTINGS = get_settings()


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


Tuneloop.add_asgi_middleware(JsonBodyOnly)
