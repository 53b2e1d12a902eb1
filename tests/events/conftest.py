"""The ``broker``/``kafka_settings`` pair the service's event tests use (a broker of the test's own, not
started); the shared broker fixtures come from the plugin tests/fixtures/broker.py (root conftest)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from tests.fixtures.broker import consume_until  # noqa: F401  (tests import it from here)
from tuneloop.events.broker import TansuBroker
from tuneloop.events.client_config import common_config, topic_names
from tuneloop.events.envelope import ReceivedEvent, unwrap
from tuneloop.events.spool import Spool
from tuneloop.settings import KafkaSettings


@pytest.fixture
def broker(own_broker: TansuBroker) -> TansuBroker:
    return own_broker


@pytest.fixture
def kafka_settings(broker: TansuBroker, tmp_path: Path) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=tmp_path / "spool")


def every_message(settings: KafkaSettings, kind: str, timeout: float = 30.0) -> list[ReceivedEvent]:
    """Every event on a kind's topic, duplicates included (``consume_until`` drops them, as consumers do):
    what a producer delivered twice shows here twice."""
    return [unwrap(r.value, r.topic, r.partition, r.offset) for r in every_record(settings, kind, timeout)]


def every_record(settings: KafkaSettings, kind: str, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every message on a kind's topic as the broker holds it (key, partition, offset), partition by partition
    in offset order."""
    topic = topic_names(settings)[kind]
    consumer = KafkaConsumer(**common_config(settings), group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def spool_segments(root: Path) -> list[Path]:
    """The segment files under a spool root, whichever process's folder they are in."""
    return sorted(root.rglob("*.spool"))


def spooled_ids(spool_dir: Path) -> list[str]:
    """The CloudEvent ids waiting under a spool root (one folder per process), in spool order per folder."""
    ids = []
    for folder in sorted({p.parent for p in spool_dir.rglob("*.spool")}):
        spool = Spool(folder, max_bytes=1 << 30)  # a reader of its own: every segment counts as sealed
        ids += [env.event_id for path in spool.sealed_segments() for env in spool.read_segment(path)]
    return ids
