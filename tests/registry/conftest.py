"""Registry tests: object-store writers settle their lease in milliseconds, not in the default second."""

from __future__ import annotations

import pytest

from tuneloop.registry.coordination import ObjectStoreCoordinator


@pytest.fixture(autouse=True)
def quick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ObjectStoreCoordinator, "lease_ttl_s", 5.0)
    monkeypatch.setattr(ObjectStoreCoordinator, "lease_settle_s", 0.02)
