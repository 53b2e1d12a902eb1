"""Which version is served, and the zero-downtime hot swap to the next one.

A supervised background loop watches the registry's production pointer. A new version is loaded beside
the old one, verified, warmed up and smoke-checked; only then does one reference assignment swap it in.
Batches already running hold the old ServedModel and finish on it. On any failure the old version keeps
serving, the failure is logged and counted, and the version is tried again after a backoff (a first load
that failed too, so a transient failure such as running out of GPU memory heals by itself).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import ModelNotReadyError, SwapError
from service.metrics import MODEL_INFO, MODEL_LOADED_AT, SWAP_FAILURES, SWAPS
from service.model import ServedModel, load_served_model
from tuneloop.registry import Registry, RegistryError
from tuneloop.settings import ServingSettings
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)

# A version that failed to load is tried again after this, doubling up to the cap.
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 600.0


@dataclass
class _Failure:
    why: str
    attempts: int
    retry_at: float  # time.monotonic()

    @classmethod
    def after(cls, previous: _Failure | None, why: str) -> _Failure:
        attempts = previous.attempts + 1 if previous else 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
        return cls(why, attempts, time.monotonic() + delay)


class ModelManager:
    def __init__(self, registry: Registry, settings: ServingSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._current: ServedModel | None = None
        self._lock = threading.Lock()  # one swap at a time
        self._watcher = SupervisedLoop("tuneloop-model-watcher", self.check_once, interval_s=settings.poll_interval_s)
        self._failed: dict[str, _Failure] = {}  # version → why it failed and when to try it again
        self.last_error: str | None = None  # for the log and the tests; clients get a short reason
        # Told (kind, model name, version, reason) after each swap or refused swap; must not block.
        self.swap_listeners: list[Callable[[str, str | None, str, str], None]] = []

    @property
    def current(self) -> ServedModel:
        served = self._current
        if served is None:
            # The detail (registry location, the load error) is for the operator's log, not for clients.
            raise ModelNotReadyError("no model is loaded yet" if self.last_error is None
                                     else "the model could not be loaded; the server log says why")
        return served

    @property
    def ready(self) -> bool:
        """Serving a model, and able to follow the production pointer (the watcher's last step succeeded)."""
        return self._current is not None and self._watcher.healthy

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
                failure = self._failed[version] = _Failure.after(self._failed.get(version), str(exc))
                self.last_error = str(exc)
                SWAP_FAILURES.labels(reason=exc.reason).inc()
                keeping = self._current.version if self._current else "nothing"
                log.error("hot swap refused, still serving %s: %s; trying again in %.0f s", keeping, exc,
                          failure.retry_at - time.monotonic())
                self._tell("swap_failed", self._current.model_name if self._current else None, version, str(exc))
                return False
            previous, self._current = self._current, served  # the swap: one reference assignment
            if previous is not None:
                MODEL_INFO.remove(previous.model_name, previous.version, previous.provider, previous.precision)
                SWAPS.inc()
            MODEL_INFO.labels(served.model_name, served.version, served.provider, served.precision).set(1)
            MODEL_LOADED_AT.set(served.loaded_at)
            self.last_error = None
            self._failed.pop(version, None)
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
        """One step of the watcher: swap to the target version if it moved (or a failed one is due)."""
        try:
            target = self.target_version()
        except (RegistryError, OSError) as exc:
            log.warning("cannot read the registry's production pointer: %s", exc)
            return
        if target is None:
            self.last_error = f"no version in production in registry {self.registry.root_url}"
            return
        # Only the target's failure is remembered: if production moves away and back, it starts afresh.
        self._failed = {v: f for v, f in self._failed.items() if v == target}
        current = self._current.version if self._current else None
        failure = self._failed.get(target)
        if target != current and (failure is None or time.monotonic() >= failure.retry_at):
            self.swap_to(target)

    def start(self) -> None:
        """Watch the production pointer in the background; the first step loads the first model."""
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop(timeout=5)
