from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def drift_monitor():
    """A drift monitor with reports (in-domain windows, then drifted ones), for the console's drift state."""
    from tests.monitoring.stack import fed_monitor

    monitor, server = fed_monitor()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture(scope="module")
def admin_world(served_registry, kafka_broker, drift_monitor, tmp_path_factory):
    from tests.admin.world import start_admin_world

    world = start_admin_world(tmp_path_factory.mktemp("admin"), served_registry, kafka_broker.bootstrap_servers,
                              drift_monitor)
    yield world
    world.adapter.stop()
