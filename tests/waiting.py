"""Polling for a condition that background work (a thread, a process, a broker) makes true eventually."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (looked at every ``interval``). The
    timeout only bounds a failing test: a passing one returns as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(interval)
    return True
