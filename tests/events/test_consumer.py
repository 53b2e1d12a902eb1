"""The consumer helper on a real broker: duplicates, bad messages, rewinding, committing."""

from __future__ import annotations

import threading
import time
import uuid

from kafka import KafkaProducer
from prometheus_client import REGISTRY

from tests.events.factories import feedback, request_id
from tests.fixtures.broker import consume_until
from tuneloop.events.client_config import ensure_topics
from tuneloop.events.consumer import EventConsumer, SeenIds
from tuneloop.events.envelope import ReceivedEvent, wrap
from tuneloop.settings import KafkaSettings


def send_raw(settings: KafkaSettings, values: list[bytes]) -> None:
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for value in values:
        producer.send(settings.feedback_topic, key=b"k", value=value)  # one key: one partition, in order
    producer.flush()
    producer.close()


def read(consumer: EventConsumer, expected: int, timeout: float = 30.0) -> list[ReceivedEvent]:
    events: list[ReceivedEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < expected and time.monotonic() < deadline:
        events += consumer.poll(timeout_ms=500).events
    return events


def test_consumer_drops_duplicates_and_skips_bad_messages(event_settings: KafkaSettings) -> None:
    seven, eight = wrap(feedback(7), "test"), wrap(feedback(8), "test")
    bad_schema = seven.value.replace(b'"label": "1"', b'"label": null')
    assert bad_schema != seven.value
    send_raw(event_settings, [seven.value, seven.value, b"not a cloudevent", bad_schema, b"{}", seven.value,
                              eight.value])
    group = f"g-{uuid.uuid4().hex[:8]}"
    got = consume_until(event_settings, ["feedback"], 2, group=group)
    assert [e.data.request_id for e in got] == [request_id(7), request_id(8)]
    assert [e.event_id for e in got] == [seven.event_id, eight.event_id]
    labels = {"topic": event_settings.feedback_topic, "group": group}
    assert REGISTRY.get_sample_value("tuneloop_events_bad_total", labels) == 3
    assert REGISTRY.get_sample_value("tuneloop_events_duplicates_total", labels) == 2


def test_persistent_store_hook_drops_what_an_earlier_process_stored(event_settings: KafkaSettings) -> None:
    stored = wrap(feedback(1), "test")
    fresh = wrap(feedback(2), "test")
    send_raw(event_settings, [stored.value, fresh.value])
    seen = SeenIds(capacity=10, is_known=lambda event_id: event_id == stored.event_id)
    with EventConsumer(event_settings, ["feedback"], group_id=f"g-{uuid.uuid4().hex[:8]}", seen=seen) as consumer:
        got = read(consumer, 1)
        got += consumer.poll(timeout_ms=500).events
    assert [e.event_id for e in got] == [fresh.event_id]


def test_seen_ids_forget_the_oldest_beyond_capacity() -> None:
    seen = SeenIds(capacity=2)
    assert not seen.seen("a") and not seen.seen("b") and seen.seen("a")
    assert not seen.seen("c")  # "b" is now the least recently seen: evicted
    assert seen.seen("a") and not seen.seen("b")


def test_rewind_rereads_a_batch_the_caller_could_not_persist_and_commit_sticks(
        event_settings: KafkaSettings) -> None:
    envelopes = [wrap(feedback(i), "test") for i in range(5)]
    send_raw(event_settings, [e.value for e in envelopes])
    group = f"g-{uuid.uuid4().hex[:8]}"
    with EventConsumer(event_settings, ["feedback"], group_id=group) as consumer:
        failed = next(consumer.batches(timeout_ms=500))
        assert failed.events
        consumer.rewind(failed)  # the caller could not persist it
        persisted: list[ReceivedEvent] = []
        stop = threading.Event()
        for batch in consumer.batches(stop, timeout_ms=500):
            persisted += batch.events
            consumer.commit(batch)
            if len(persisted) >= 5:
                stop.set()
    # The rewound events came again (not dropped as duplicates), and each once.
    assert [e.event_id for e in persisted] == [e.event_id for e in envelopes]
    with EventConsumer(event_settings, ["feedback"], group_id=group) as consumer:  # the same group later
        assert read(consumer, 1, timeout=6) == []  # everything was committed
