"""Real Tansu brokers on free loopback ports, and helpers to read back what reached them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.events.broker import TansuBroker
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.envelope import ReceivedEvent
from tuneloop.settings import KafkaSettings


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of the test's own (tests here kill and restart theirs), not yet started."""
    instance = TansuBroker(log_path=tmp_path / "tansu.log")
    yield instance
    instance.stop()


@pytest.fixture
def kafka_settings(broker: TansuBroker, tmp_path: Path) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=tmp_path / "spool")


def consume_until(settings: KafkaSettings, kinds: list[str], expected: int, timeout: float = 60.0,
                  group: str | None = None) -> list[ReceivedEvent]:
    consumer = EventConsumer(settings, kinds, group_id=group or f"test-{uuid.uuid4().hex[:8]}")
    events: list[ReceivedEvent] = []
    deadline = time.monotonic() + timeout
    try:
        while len(events) < expected and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            events.extend(batch.events)
            consumer.commit(batch)
        # Read a little longer: more than expected would be a bug the assertions should see.
        batch = consumer.poll(timeout_ms=500)
        events.extend(batch.events)
    finally:
        consumer.close()
    return events
