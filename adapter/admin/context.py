"""What the admin surfaces work on, handed to them by ``tuneloop adapt`` (adapter/loop/service.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapter.admin.actions import Actions
from adapter.admin.sessions import SessionSigner
from adapter.admin.tokens import TokenBook
from adapter.loop.store import LabelStore
from adapter.loop.triggers import Triggers
from tuneloop.registry import Registry


@dataclass
class AdminContext:
    registry: Registry  # with the adapter's listener: every transition is published on tuneloop.model-events
    store: LabelStore
    triggers: Triggers
    tokens: TokenBook
    sessions: SessionSigner
    status: Callable[[], dict[str, Any]]  # the adapter's own /status
    monitor_url: str | None

    def actions(self, surface: str) -> Actions:
        return Actions(self.registry, self.triggers, surface)
