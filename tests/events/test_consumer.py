"""The consumer helper on a real broker: duplicates, bad messages, rewinding, committing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

from prometheus_client import REGISTRY

from tests.events.factories import feedback, prediction, request_id
from tests.events.poison import poison, rejected, send_raw, with_attributes
from tests.fixtures.broker import consume_until
from tuneloop.events.consumer import EventConsumer, SeenIds
from tuneloop.events.envelope import ReceivedEvent, wrap
from tuneloop.settings import KafkaSettings


def read(consumer: EventConsumer, expected: int, timeout: float = 30.0) -> list[ReceivedEvent]:
    events: list[ReceivedEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < expected and time.monotonic() < deadline:
        events += consumer.poll(timeout_ms=500).events
    return events


def test_consumer_drops_duplicates_and_skips_bad_messages(event_settings: KafkaSettings) -> None:
    seven, eight = wrap(feedback(7), "test"), wrap(feedback(8), "test")
    bad_schema = with_attributes(seven, data={**json.loads(seven.value)["data"], "label": None})
    send_raw(event_settings, [seven.value, seven.value, b"not a cloudevent", bad_schema, b"{}", seven.value,
                              eight.value])
    group = f"g-{uuid.uuid4().hex[:8]}"
    got = consume_until(event_settings, ["feedback"], 2, group=group)
    assert [e.data.request_id for e in got] == [request_id(7), request_id(8)]
    assert [e.event_id for e in got] == [seven.event_id, eight.event_id]
    labels = {"topic": event_settings.feedback_topic, "group": group}
    assert rejected(event_settings.feedback_topic) == {"bad_json": 1, "schema": 1, "not_cloudevent": 1}
    assert REGISTRY.get_sample_value("tuneloop_events_duplicates_total", labels) == 2


def test_each_poison_message_is_skipped_alone_and_the_partition_goes_on(
        event_settings: KafkaSettings) -> None:
    poisons = poison(wrap(prediction(0), "test"))
    goods = [wrap(prediction(i), "test") for i in range(len(poisons) + 1)]
    values: list[bytes | None] = [goods[0].value]
    for (_, value, _), good in zip(poisons, goods[1:], strict=True):  # good, poison, good, ...: one partition
        values += [value, good.value]
    send_raw(event_settings, values, topic=event_settings.predictions_topic)
    group = f"g-{uuid.uuid4().hex[:8]}"
    delivered: list[ReceivedEvent] = []
    stop = threading.Event()
    give_up = threading.Timer(30, stop.set)  # batches() yields no empty polls: a lost event must not hang us
    give_up.start()
    with EventConsumer(event_settings, ["predictions"], group_id=group) as consumer:
        for batch in consumer.batches(stop, timeout_ms=500):  # a poison message raising here would every retry
            delivered += batch.events
            consumer.commit(batch)
            if len(delivered) >= len(goods):
                stop.set()
    give_up.cancel()
    assert [e.event_id for e in delivered] == [g.event_id for g in goods]
    assert rejected(event_settings.predictions_topic) == dict(Counter(reason for _, _, reason in poisons))
    with EventConsumer(event_settings, ["predictions"], group_id=group) as consumer:
        assert read(consumer, 1, timeout=6) == []  # the commit moved past the poison too


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


def test_rewind_after_some_events_rereads_only_the_rest(event_settings: KafkaSettings) -> None:
    envelopes = [wrap(feedback(i), "test") for i in range(5)]
    send_raw(event_settings, [e.value for e in envelopes])
    with EventConsumer(event_settings, ["feedback"], group_id=f"g-{uuid.uuid4().hex[:8]}") as consumer:
        first = next(consumer.batches(timeout_ms=500))
        handled = min(2, len(first.events) - 1)  # however the broker split the five into fetches
        consumer.rewind(first, handled)
        again = read(consumer, 5 - handled)
    assert [e.event_id for e in again] == [e.event_id for e in envelopes[handled:]]
