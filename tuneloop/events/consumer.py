"""Reading events as a consumer group: decode, drop duplicates, commit only what the caller persisted.

    consumer = EventConsumer(settings, ["predictions"], group_id="monitor")
    while running:
        batch = consumer.poll(timeout_ms=1000)
        store(batch.events)          # persist first ...
        consumer.commit(batch)       # ... then commit: a crash in between re-delivers, never loses
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from prometheus_client import Counter

from tuneloop.events.client_config import common_config, topic_names
from tuneloop.events.envelope import ReceivedEvent, unwrap
from tuneloop.events.errors import BadEventError
from tuneloop.settings import KafkaSettings

log = logging.getLogger(__name__)

CONSUMED = Counter("tuneloop_events_consumed_total", "Events read by a consumer", ["topic", "group"])
DUPLICATES = Counter("tuneloop_events_duplicates_total", "Duplicate events dropped", ["topic", "group"])
BAD = Counter("tuneloop_events_bad_total", "Messages that are not events of a known schema", ["topic", "group"])


@dataclass
class Batch:
    events: list[ReceivedEvent]
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read, per partition


class SeenIds:
    """A bounded memory of event ids; an optional ``is_known`` looks further back (a database, say)."""

    def __init__(self, capacity: int = 100_000, is_known: Callable[[str], bool] | None = None) -> None:
        self.capacity = capacity
        self.is_known = is_known
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            return True
        if self.is_known is not None and self.is_known(event_id):
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


class EventConsumer:
    def __init__(self, settings: KafkaSettings, kinds: list[str], group_id: str,
                 seen: SeenIds | None = None, auto_offset_reset: str = "earliest") -> None:
        names = topic_names(settings)
        self.group_id = group_id
        self.seen = seen or SeenIds()
        self._consumer = KafkaConsumer(
            *[names[k] for k in kinds], **common_config(settings), group_id=group_id,
            enable_auto_commit=False, auto_offset_reset=auto_offset_reset,
            max_poll_interval_ms=settings.max_poll_interval_ms, session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        )

    def poll(self, timeout_ms: int = 1000, max_records: int = 500) -> Batch:
        records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        batch = Batch(events=[])
        for partition, messages in records.items():
            for message in messages:
                batch.offsets[partition] = message.offset + 1
                try:
                    event = unwrap(message.value, message.topic, message.partition, message.offset)
                except BadEventError as exc:
                    BAD.labels(message.topic, self.group_id).inc()
                    log.warning("skipping %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
                    continue
                if self.seen.seen(event.event_id):
                    DUPLICATES.labels(message.topic, self.group_id).inc()
                    continue
                CONSUMED.labels(message.topic, self.group_id).inc()
                batch.events.append(event)
        return batch

    def commit(self, batch: Batch) -> None:
        if batch.offsets:
            self._consumer.commit({tp: OffsetAndMetadata(offset, None, -1) for tp, offset in batch.offsets.items()})

    def close(self) -> None:
        self._consumer.close()
