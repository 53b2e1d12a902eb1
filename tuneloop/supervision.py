"""Background loops that never die silently.

Every long-running thread of the service, the monitor and the adapter is a ``SupervisedLoop``: it runs one
step at a time, and a step that raises is logged (with its traceback once per failure episode, a line
after that), counted in ``tuneloop_background_errors_total{thread}``, and retried after a backoff that
doubles up to a cap. Owners read ``healthy`` (did the last step succeed?) for their readiness.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import Counter

log = logging.getLogger(__name__)

BACKGROUND_ERRORS = Counter("tuneloop_background_errors_total",
                            "Steps of a background thread that raised (each is logged and retried)", ["thread"])

# A step returns how long to wait before the next one (None: the loop's interval).
Step = Callable[[], float | None]


class SupervisedLoop:
    def __init__(self, name: str, step: Step, *, interval_s: float = 0.0, stop: threading.Event | None = None,
                 initial_backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.stop_event = stop or threading.Event()
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.failures = 0  # in a row; 0 once a step succeeds
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        BACKGROUND_ERRORS.labels(name)  # the series shows from the start, at 0

    @property
    def healthy(self) -> bool:
        return self.failures == 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SupervisedLoop:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """The loop itself, in the calling thread: steps until ``stop`` is set."""
        while not self.stop_event.is_set():
            wait = self.run_step()
            if wait:
                self.stop_event.wait(wait)

    def run_step(self) -> float | None:
        """One step; returns how long to wait before the next."""
        try:
            wait = self.step()
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            BACKGROUND_ERRORS.labels(self.name).inc()
            backoff = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (self.failures - 1))
            if self.failures == 1:
                log.exception("%s failed; retrying in %.1f s", self.name, backoff)
            else:
                log.error("%s failed again (%d in a row): %s; retrying in %.1f s",
                          self.name, self.failures, self.last_error, backoff)
            return backoff
        if self.failures:
            log.info("%s recovered after %d failed step(s)", self.name, self.failures)
        self.failures, self.last_error = 0, None
        return self.interval_s if wait is None else wait

    def stop(self, timeout: float | None = 5.0) -> None:
        self.stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

