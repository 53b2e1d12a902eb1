"""Each overlay rendered once per session (kustomize is the real one, through kubectl)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import OVERLAYS, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay_objects(request: pytest.FixtureRequest, rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered[request.param]
