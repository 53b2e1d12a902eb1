"""`tuneloop adapt`: the adapter as a long-running process beside the service (its sidecar).

Three supervised loops and an HTTP server:
- the joiner: predictions and feedback into the store, drift events into triggers (adapter/loop/joiner.py);
- the ticker: forget what outlived the feedback horizon, ask for retrainings by label volume and schedule,
  watch the last promotion, refresh the gauges;
- the retrainer: one retraining at a time across every adapter sharing the store (adapter/loop/retrain.py);
- HTTP on ``adapter.port``: ``POST /alerts`` (Alertmanager's webhook), ``GET /status``, ``/healthz``,
  ``/metrics``;
- HTTP on ``adapter.admin_port``: the operators' admin API and console (adapter/admin/).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import ValidationError

from adapter.admin.app import build_admin_app
from adapter.admin.context import AdminContext
from adapter.admin.sessions import SessionSigner
from adapter.admin.tokens import TokenBook
from adapter.errors import WebhookError
from adapter.loop import metrics
from adapter.loop.joiner import KINDS, Joiner
from adapter.loop.policy import AdapterPolicy
from adapter.loop.retrain import Retrainer
from adapter.loop.store import LabelStore
from adapter.loop.triggers import AlertNotification, Triggers, WebhookAuth
from adapter.loop.watch import PromotionWatch, oldest_waiting_seconds
from tuneloop.events.client_config import ensure_topics
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.producer import EventLog
from tuneloop.events.transitions import TransitionPublisher
from tuneloop.registry import Registry
from tuneloop.settings import Settings
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)


class AdapterService:
    def __init__(self, settings: Settings, policy: AdapterPolicy) -> None:
        self.settings = settings
        self.policy = policy
        owner = f"{socket.gethostname()}/{os.getpid()}"
        self.store = LabelStore(settings.adapter.store_url)
        self.registry = Registry(settings.registry)
        self.events = EventLog(settings.kafka, source=f"tuneloop-adapter/{owner}")
        self.registry.listeners.append(TransitionPublisher(self.events))
        self.triggers = Triggers(self.store, policy.triggers)
        self.retrainer = Retrainer(settings, policy, self.store, self.registry, owner=owner)
        self.watch = PromotionWatch(self.registry, self.store, policy.rollback)
        self.auth = WebhookAuth(settings.adapter.webhook_token_file)
        self.consumer: EventConsumer | None = None
        self.stop_event = threading.Event()
        self.loops: list[SupervisedLoop] = []
        self.http: uvicorn.Server | None = None
        self.admin_http: uvicorn.Server | None = None
        self.tokens = TokenBook(settings.adapter.admin_tokens_file)
        self.last_outcome: dict[str, Any] | None = None
        self.fresh = 0
        metrics.initialise()

    # ------------------------------------------------------------------ the loops' steps
    def tick(self) -> None:
        dropped = self.store.expire(self.settings.adapter.feedback_horizon_s)
        if dropped:
            metrics.FEEDBACK.labels("unmatched").inc(dropped)
        self.fresh = self.retrainer.fresh_count() if self.registry.production() else 0
        metrics.FRESH.set(self.fresh)
        self.triggers.check_volume(self.fresh)
        self.triggers.check_schedule()
        self.watch.step()
        for (label, version), n in self.store.counts().items():
            metrics.EXAMPLES.labels(label, version).set(n)
        metrics.WAITING.set(oldest_waiting_seconds(self.registry))

    def retrain(self) -> None:
        outcome = self.retrainer.run_if_due()
        if outcome is not None:
            self.last_outcome = {"run": outcome.run_id, "version": outcome.version, "state": outcome.state.value,
                                 "reasons": outcome.report.reasons()}
            log.info("run %d registered %s: %s%s", outcome.run_id, outcome.version, outcome.state.value,
                     "" if outcome.report.passed else " — " + "; ".join(outcome.report.reasons()))

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        if not self.auth.configured:
            log.warning("adapter.webhook_token_file is not set: the alert webhook refuses every notification")
        try:
            ensure_topics(self.settings.kafka)
        except Exception as exc:  # the consumer retries; the service may create them first
            log.warning("could not make sure the topics exist: %s", exc)
        self.events.start()
        self.consumer = EventConsumer(self.settings.kafka, KINDS, group_id=self.settings.adapter.consumer_group)
        joiner = Joiner(self.consumer, self.store, self.triggers)
        tick_s = self.settings.adapter.tick_s
        self.loops = [
            SupervisedLoop("tuneloop-adapter-joiner", joiner.step, stop=self.stop_event).start(),
            SupervisedLoop("tuneloop-adapter-ticker", self.tick, interval_s=tick_s, stop=self.stop_event).start(),
            SupervisedLoop("tuneloop-adapter-retrainer", self.retrain, interval_s=tick_s, stop=self.stop_event,
                           initial_backoff_s=30, max_backoff_s=600).start(),
        ]
        self.http = self._serve(self.app(), self.settings.adapter.port, "tuneloop-adapter-http")
        if self.settings.adapter.admin_port is not None:
            self.admin_http = self._serve(self.admin_app(), self.settings.adapter.admin_port, "tuneloop-admin-http")

    def _serve(self, app: FastAPI, port: int, name: str) -> uvicorn.Server:
        # No access log: an operator's token is never in a URL, but a log of every scrape is noise.
        config = uvicorn.Config(app, host=self.settings.adapter.host, port=port, log_level="warning",
                                access_log=False)
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, name=name, daemon=True).start()
        return server

    @property
    def port(self) -> int:
        """The port HTTP listens on (the one the OS picked when adapter.port is 0)."""
        return _bound_port(self.http) or self.settings.adapter.port

    @property
    def admin_port(self) -> int | None:
        return _bound_port(self.admin_http) or self.settings.adapter.admin_port

    def stop(self) -> None:
        self.stop_event.set()
        for loop in self.loops:
            loop.join(timeout=30)
        for server in (self.http, self.admin_http):
            if server is not None:
                server.should_exit = True
        if self.consumer is not None:
            self.consumer.close()
        self.events.close()

    # ------------------------------------------------------------------ HTTP
    def app(self) -> FastAPI:
        app = FastAPI(title="tuneloop adapter", docs_url=None, redoc_url=None)

        @app.post("/alerts", status_code=202, responses={400: {}, 401: {}})
        async def alerts(request: Request) -> JSONResponse:
            try:
                self.auth.check(request.headers.get("authorization"))
            except WebhookError as exc:
                metrics.WEBHOOK.labels("401").inc()
                return JSONResponse({"error": str(exc)}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="tuneloop-adapter"'})
            try:
                notification = AlertNotification.model_validate_json(await request.body())
            except ValidationError as exc:
                metrics.WEBHOOK.labels("400").inc()
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
                return JSONResponse({"error": f"not an Alertmanager notification: {problems}"}, status_code=400)
            recorded = self.triggers.on_alerts(notification)
            metrics.WEBHOOK.labels("202").inc()
            return JSONResponse({"triggers": recorded}, status_code=202)

        @app.get("/healthz")
        async def healthz() -> dict[str, bool]:
            return {"live": True}

        @app.get("/status")
        async def status() -> dict[str, Any]:
            return self.status()

        @app.get("/metrics")
        async def prometheus_metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

        return app

    def admin_app(self) -> FastAPI:
        """The operators' API and console (adapter/admin/), on their own port."""
        adapter = self.settings.adapter
        if not self.tokens.configured:
            log.warning("adapter.admin_tokens_file is not set: the admin API and console refuse everyone")
        return build_admin_app(AdminContext(
            registry=self.registry, store=self.store, triggers=self.triggers, tokens=self.tokens,
            sessions=SessionSigner(self.tokens, adapter.session_secret_file, adapter.session_lifetime_s),
            status=self.status, monitor_url=adapter.monitor_url))

    def status(self) -> dict[str, Any]:
        return {
            "production": self.registry.production(),
            "retraining": self.retrainer.running_run,
            "waiting_triggers": [{"id": t.id, "kind": t.kind, "at": t.at.isoformat(), **t.detail}
                                 for t in self.store.waiting_triggers()],
            "fresh_examples": self.fresh,
            "examples": {f"{label}/{version}": n for (label, version), n in self.store.counts().items()},
            "last_outcome": self.last_outcome,
            "loops": {loop.name: {"healthy": loop.healthy, "last_error": loop.last_error} for loop in self.loops},
        }


def _bound_port(server: uvicorn.Server | None) -> int | None:
    for listener in getattr(server, "servers", None) or []:
        for sock in listener.sockets:
            return sock.getsockname()[1]
    return None
