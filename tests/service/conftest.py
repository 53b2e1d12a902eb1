"""Fixtures the serving tests share: a registry with a tiny production version and an in-process DataPlane."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.dataplane import ClassifyResult, DataPlane
from service.swap import ModelManager
from tuneloop.registry import Registry
from tuneloop.settings import load_settings


def classify_columns(url: str, model: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """What ``/classify`` answers for ``texts``: the labels, and the probabilities with columns in the
    model's label order (as the OIP outputs have them), to check the other transports against."""
    labels = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()["parameters"]["labels"]
    response = httpx.post(f"{url}/classify", json={"texts": texts}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    probabilities = [[p["probabilities"][label] for label in labels] for p in predictions]
    return [p["label"] for p in predictions], np.array(probabilities, dtype=np.float32)


def classify_now(plane: DataPlane, texts: list[str]) -> ClassifyResult:
    """One classification through the in-process DataPlane, from synchronous test code."""
    return asyncio.run(plane.classify(texts))


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
