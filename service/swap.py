"""Which version is served, and the zero-downtime hot swap to the next one.

A background thread watches the registry's production pointer. A new version is loaded beside the
old one, verified, warmed up and smoke-checked; only then does one reference assignment swap it in.
Batches already running hold the old ServedModel and finish on it. On any failure the old version
keeps serving, and the failure is logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.errors import ModelNotReadyError, SwapError
from service.metrics import MODEL_INFO, MODEL_LOADED_AT, SWAP_FAILURES, SWAPS
from service.model import ServedModel, load_served_model
from tuneloop.registry import Registry, RegistryError
from tuneloop.settings import ServingSettings

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, registry: Registry, settings: ServingSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._current: ServedModel | None = None
        self._lock = threading.Lock()  # one swap at a time
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._failed: dict[str, str] = {}  # version → why; not retried until production moves again
        self.last_error: str | None = None
        # Told (kind, model name, version, reason) after each swap or refused swap; must not block.
        self.swap_listeners: list[Callable[[str, str | None, str, str], None]] = []

    @property
    def current(self) -> ServedModel:
        served = self._current
        if served is None:
            raise ModelNotReadyError(self.last_error or "no model loaded yet")
        return served

    @property
    def ready(self) -> bool:
        return self._current is not None

    def target_version(self) -> str | None:
        return self.settings.version or self.registry.production()

    def swap_to(self, version: str) -> bool:
        """Load ``version`` and swap it in; False (old version kept) if any step fails."""
        with self._lock:
            if self._current is not None and self._current.version == version:
                return True
            started = time.perf_counter()
            try:
                served = load_served_model(self.registry, version, self.settings)
            except SwapError as exc:
                self._failed[version] = str(exc)
                self.last_error = str(exc)
                SWAP_FAILURES.labels(reason=exc.reason).inc()
                keeping = self._current.version if self._current else "nothing"
                log.error("hot swap refused, still serving %s: %s", keeping, exc)
                self._tell("swap_failed", self._current.model_name if self._current else None, version, str(exc))
                return False
            previous, self._current = self._current, served  # the swap: one reference assignment
            if previous is not None:
                MODEL_INFO.remove(previous.model_name, previous.version, previous.provider, previous.precision)
                SWAPS.inc()
            MODEL_INFO.labels(served.model_name, served.version, served.provider, served.precision).set(1)
            MODEL_LOADED_AT.set(served.loaded_at)
            self.last_error = None
            self._tell("swap", served.model_name, version,
                       f"replacing {previous.version}" if previous else "first model loaded")
            log.info("serving %s %s (%s, %s); loaded in %.1f s, replacing %s", served.model_name, version,
                     served.provider, served.precision, time.perf_counter() - started,
                     previous.version if previous else "nothing")
            return True

    def _tell(self, kind: str, model_name: str | None, version: str, reason: str) -> None:
        for listener in self.swap_listeners:
            listener(kind, model_name, version, reason)

    def check_once(self) -> None:
        try:
            target = self.target_version()
        except (RegistryError, OSError) as exc:
            log.warning("cannot read the registry's production pointer: %s", exc)
            return
        if target is None:
            self.last_error = f"no version in production in registry {self.registry.root_url}"
            return
        current = self._current.version if self._current else None
        if target != current and target not in self._failed:
            self.swap_to(target)
        # A failed version is retried only after production moved elsewhere and came back.
        self._failed = {v: why for v, why in self._failed.items() if v == target}

    def start(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="tuneloop-model-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.settings.poll_interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
