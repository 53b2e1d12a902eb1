"""Events ↔ Kafka messages: CloudEvents 1.0 in structured JSON mode (the whole event in the value)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cloudevents.core.bindings.kafka import KafkaMessage, from_structured_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from pydantic import ValidationError

from tuneloop.events.errors import BadEventError
from tuneloop.events.schemas import SCHEMAS, EventData


@dataclass(frozen=True)
class Envelope:
    """One event ready to send: the topic kind, the key, the CloudEvent bytes and its id."""

    kind: str
    key: bytes
    value: bytes
    event_id: str


@dataclass(frozen=True)
class ReceivedEvent:
    event_id: str
    event_type: str
    source: str
    data: EventData
    topic: str
    partition: int
    offset: int


def wrap(data: EventData, source: str) -> Envelope:
    event = CloudEvent(attributes={"type": data.event_type, "source": source,
                                   "datacontenttype": "application/json"},
                       data=json.loads(data.model_dump_json()))
    message = to_structured_event(event, key_mapper=lambda _: data.key())
    key = message.key.encode() if isinstance(message.key, str) else (message.key or b"")
    return Envelope(kind=data.topic_kind, key=key, value=message.value, event_id=event.get_id())


def unwrap(value: bytes, topic: str = "", partition: int = -1, offset: int = -1) -> ReceivedEvent:
    try:
        event = from_structured_event(KafkaMessage(headers={}, key=None, value=value))
    except Exception as exc:  # the cloudevents parser raises several kinds for malformed input
        raise BadEventError(f"not a structured CloudEvent: {type(exc).__name__}: {exc}") from None
    schema = SCHEMAS.get(event.get_type())
    if schema is None:
        raise BadEventError(f"unknown event type {event.get_type()!r}")
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    try:
        parsed = schema.model_validate(data)
    except ValidationError as exc:
        raise BadEventError(f"{event.get_type()} does not match its schema: {exc.errors()[0]['msg']}") from None
    return ReceivedEvent(event_id=event.get_id(), event_type=event.get_type(), source=event.get_source(),
                         data=parsed, topic=topic, partition=partition, offset=offset)
