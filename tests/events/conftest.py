"""The ``broker``/``kafka_settings`` pair the service's event tests use (a broker of the test's own, not
started); the shared broker fixtures come from the plugin tests/fixtures/broker.py (root conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.broker import consume_until  # noqa: F401  (tests import it from here)
from tuneloop.events.broker import TansuBroker
from tuneloop.settings import KafkaSettings


@pytest.fixture
def broker(own_broker: TansuBroker) -> TansuBroker:
    return own_broker


@pytest.fixture
def kafka_settings(broker: TansuBroker, tmp_path: Path) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=tmp_path / "spool")
