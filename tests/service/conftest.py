"""Fixtures the serving tests share: a registry with a tiny production version and an in-process DataPlane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.dataplane import DataPlane
from service.swap import ModelManager
from tuneloop.registry import Registry
from tuneloop.settings import load_settings


def start_dataplane(registry_root: Path, *, load: bool = True) -> DataPlane:
    """A started DataPlane over ``registry_root``; ``load=False`` leaves it not ready (nothing loaded)."""
    serving = load_settings(registry=str(registry_root)).serving
    manager = ModelManager(Registry(registry_root), serving)
    if load:
        manager.check_once()
        assert manager.ready, manager.last_error
    plane = DataPlane(manager, serving)
    plane.start()
    return plane


@pytest.fixture(scope="session")
def dataplane(served_registry: Path) -> Iterator[DataPlane]:
    """The one inference path, in this process, serving the tiny version (no hot-swap watcher)."""
    plane = start_dataplane(served_registry)
    yield plane
    plane.stop()
