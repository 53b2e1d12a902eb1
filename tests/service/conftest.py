"""Fixtures the serving tests share: a registry with a tiny production version and an in-process DataPlane."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.dataplane import DataPlane
from service.swap import ModelManager
from tests.model_versions import approve_and_promote, train_tiny_version
from tuneloop.registry import Registry
from tuneloop.settings import load_settings


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory: pytest.TempPathFactory, small_amazon: Path, tiny_bert: Path) -> Path:
    """A registry whose production version is a tiny classifier (model "sentiment", version "v1").

    Session-wide: training and exporting it is the slow part, and nothing here writes to it.
    Test modules that need their own registry define a fixture of the same name, which wins.
    """
    root = tmp_path_factory.mktemp("served") / "registry"
    version = train_tiny_version(root, small_amazon, tiny_bert)
    approve_and_promote(root, version)
    return root


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
