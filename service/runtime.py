"""Everything one serving process owns: the model manager, the data plane, the gRPC server, the event log.

Built once per BentoML worker; transports reach the data plane through it.
"""

from __future__ import annotations

import logging
import os
import socket

from service.dataplane import DataPlane
from service.event_logging import PredictionLogger, swap_event
from service.metrics import initialise_series
from service.swap import ModelManager
from tuneloop.events.producer import EventLog
from tuneloop.events.shipper import ShippedEventLog
from tuneloop.registry import Registry
from tuneloop.settings import Settings

log = logging.getLogger(__name__)


class ServingRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.manager = ModelManager(self.registry, settings.serving)
        self.dataplane = DataPlane(self.manager, settings.serving)
        self.grpc_server = None
        self.events: EventLog | ShippedEventLog | None = None
        if settings.kafka.enabled:
            event_log = ShippedEventLog if settings.kafka.shipper == "process" else EventLog
            self.events = event_log(settings.kafka, source=f"tuneloop-service/{socket.gethostname()}/{os.getpid()}")
            self.dataplane.listeners.append(PredictionLogger(self.events, settings.kafka))
            events = self.events
            self.manager.swap_listeners.append(
                lambda kind, name, version, reason: swap_event(events, kind, name, version, reason))

    def start(self) -> None:
        http = ("200", "400", "404", "413", "499", "500", "503")
        grpc = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED",
                "DEADLINE_EXCEEDED")
        initialise_series({"/classify": http, "/v2/models/{name}/infer": http, "/feedback": http,
                           "grpc:ModelInfer": grpc}, ("verify", "load", "warm_up", "smoke_check"))
        if self.events is not None:
            self.events.start()  # returns at once, broker or not: events spool until it is reachable
        self.dataplane.start()
        # Load in the background: the process is live at once and ready once a model is warm.
        self.manager.start()
        port = self.settings.serving.grpc_port
        if port:
            from service.grpc.server import start_grpc_server

            self.grpc_server = start_grpc_server(self.dataplane, port, host=self.settings.serving.host)
            log.info("gRPC (Open Inference Protocol v2) on %s:%d", self.settings.serving.host, port)

    def stop(self) -> None:
        """Graceful: stop taking gRPC calls, finish queued batches, then stop watching."""
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=10).wait()
        self.dataplane.stop()
        self.manager.stop()
        if self.events is not None:
            self.events.close()  # after the last batch: its predictions are delivered or spooled
