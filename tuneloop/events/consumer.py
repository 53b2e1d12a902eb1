"""Reading events as a consumer group: decode, drop duplicates, commit only what the caller persisted.

    consumer = EventConsumer(settings, ["predictions"], group_id="monitor")
    for batch in consumer.batches(stop):    # or: batch = consumer.poll(timeout_ms=1000)
        try:
            store(batch.events)             # persist first ...
        except Exception:
            consumer.rewind(batch)          # ... on failure read the same events again ...
            continue
        consumer.commit(batch)              # ... and commit only then: a crash in between re-delivers

Delivery is at-least-once, so the same event can arrive twice (a producer replaying its spool, a
consumer re-reading after a crash). Each event's CloudEvent id is remembered in a bounded LRU
(``SeenIds``); a caller that persists events can look further back by passing ``is_known`` (e.g. a
lookup in its own store). A message that is not an event of a known schema is counted in
``tuneloop_events_rejected_total{topic,reason}`` and skipped alone: the messages around it are delivered, and
the next commit moves past it, so no message can stop a partition.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from prometheus_client import Counter

from tuneloop.events.client_config import consumer_config, topic_names
from tuneloop.events.envelope import ReceivedEvent, unwrap
from tuneloop.events.errors import BAD_EVENT_REASONS, BadEventError
from tuneloop.events.rejections import count_rejected, declare
from tuneloop.settings import KafkaSettings

log = logging.getLogger(__name__)

CONSUMED = Counter("tuneloop_events_consumed_total", "Events read by a consumer", ["topic", "group"])
DUPLICATES = Counter("tuneloop_events_duplicates_total", "Duplicate events dropped", ["topic", "group"])
UNREADABLE = "unreadable"  # the rejection reason of a message whose decoding raised something unexpected


@dataclass
class Batch:
    events: list[ReceivedEvent]
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read, per partition
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)  # where this batch began


@dataclass(frozen=True)
class PartitionLag:
    messages: int  # records on the partition past this consumer's position
    last_timestamp: float | None  # when the last record it read was produced (s), None before the first


class SeenIds:
    """A bounded memory of event ids; an optional ``is_known`` looks further back (a database, say)."""

    def __init__(self, capacity: int = 100_000, is_known: Callable[[str], bool] | None = None) -> None:
        self.capacity = capacity
        self.is_known = is_known
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True if the id was seen before; otherwise remember it and return False."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        if self.is_known is not None and self.is_known(event_id):
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def forget(self, event_ids: list[str]) -> None:
        """Undo ``seen`` for events the caller could not persist, so their re-delivery is not dropped."""
        for event_id in event_ids:
            self._ids.pop(event_id, None)


class EventConsumer:
    """A consumer-group reader of the event topics (``kinds``: "predictions", "feedback", "model-events")."""

    def __init__(self, settings: KafkaSettings, kinds: list[str], group_id: str,
                 seen: SeenIds | None = None, auto_offset_reset: str = "earliest") -> None:
        names = topic_names(settings)
        unknown = set(kinds) - set(names)
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)}; known: {sorted(names)}")
        self.group_id = group_id
        self.topics = [names[k] for k in kinds]
        self.seen = seen or SeenIds(settings.dedupe_capacity)
        declare(self.topics, [*BAD_EVENT_REASONS, UNREADABLE])
        self._consumer = KafkaConsumer(*self.topics, **consumer_config(settings, group_id, auto_offset_reset))
        self._next: dict[TopicPartition, int] = {}  # the next offset to read, per partition read from
        self._stamps: dict[TopicPartition, float] = {}  # the last record's timestamp, per partition
        # Per-topic counter children: labels() per event was a tenth of a busy consumer's own time.
        self._consumed = {topic: CONSUMED.labels(topic, group_id) for topic in self.topics}

    def poll(self, timeout_ms: int = 1000, max_records: int = 500) -> Batch:
        """Read what is there (possibly nothing), decoded, without duplicates or undecodable messages."""
        records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        batch = Batch(events=[])
        for partition, messages in records.items():
            if messages:
                self._next[partition] = messages[-1].offset + 1
                self._stamps[partition] = messages[-1].timestamp / 1000
            for message in messages:
                batch.first_offsets.setdefault(partition, message.offset)
                batch.offsets[partition] = message.offset + 1
                try:
                    event = unwrap(message.value, message.topic, message.partition, message.offset)
                except BadEventError as exc:
                    count_rejected(message.topic, exc.reason)
                    log.warning("skipping %s[%d]@%d (%s): %s", message.topic, message.partition,
                                message.offset, exc.reason, exc)
                    continue
                except Exception:  # a bug in decoding, not a bad message: no reason to stop the partition
                    count_rejected(message.topic, UNREADABLE)
                    log.exception("skipping %s[%d]@%d: decoding it failed", message.topic, message.partition,
                                  message.offset)
                    continue
                if self.seen.seen(event.event_id):
                    DUPLICATES.labels(message.topic, self.group_id).inc()
                    continue
                self._consumed[message.topic].inc()
                batch.events.append(event)
        return batch

    def batches(self, stop: threading.Event | None = None, timeout_ms: int = 1000,
                max_records: int = 500) -> Iterator[Batch]:
        """Batches until ``stop`` is set (forever without one); empty polls are not yielded."""
        while stop is None or not stop.is_set():
            batch = self.poll(timeout_ms=timeout_ms, max_records=max_records)
            if batch.offsets:
                yield batch

    def lag(self) -> dict[TopicPartition, PartitionLag]:
        """Per assigned partition: how far behind the broker this consumer is, from what the last fetches
        said (no request of its own). A partition appears once a fetch has told its high watermark."""
        lags = {}
        assigned = self._consumer.assignment()
        for partition in set(self._next) - assigned:  # revoked: its next owner reads it from the last commit
            self._next.pop(partition)
            self._stamps.pop(partition, None)
        for partition in assigned:
            highwater = self._consumer.highwater(partition)
            position = self._next.get(partition)
            if position is None:
                try:  # nothing read from it yet: its committed or reset position, known after the first poll
                    position = self._consumer.position(partition, timeout_ms=0)
                except Exception:  # an unassigned or unpositioned partition: no figure yet
                    position = None
            if highwater is not None and position is not None:
                lags[partition] = PartitionLag(max(0, highwater - position), self._stamps.get(partition))
        return lags

    def commit(self, batch: Batch) -> None:
        """Commit the batch's offsets: call it only after what the batch held is persisted."""
        if batch.offsets:
            self._consumer.commit({tp: OffsetAndMetadata(offset, None, -1) for tp, offset in batch.offsets.items()})

    def rewind(self, batch: Batch, handled: int = 0) -> None:
        """The caller could not persist ``batch`` past its first ``handled`` events: read the rest again on
        the next poll (all of it, from the batch's first offsets, by default)."""
        rest = batch.events[handled:]
        self.seen.forget([event.event_id for event in rest])
        if handled:
            starts: dict[TopicPartition, int] = {}
            for event in rest:  # a batch holds each partition's events in offset order
                starts.setdefault(TopicPartition(event.topic, event.partition), event.offset)
        else:
            starts = batch.first_offsets
        assigned = self._consumer.assignment()
        for partition, offset in starts.items():
            if partition in assigned:  # a revoked partition's new owner starts from the last commit anyway
                self._consumer.seek(partition, offset)
                self._next[partition] = offset

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
