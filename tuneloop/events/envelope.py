"""Events ↔ Kafka messages: CloudEvents 1.0 in structured JSON mode (the whole event in the value)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cloudevents.core.base import BaseCloudEvent
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


def unwrap(value: bytes | None, topic: str = "", partition: int = -1, offset: int = -1) -> ReceivedEvent:
    """The event in a message's value; ``BadEventError`` (with its ``reason``) for anything else.

    Every way a value can be malformed ends in ``BadEventError``, so a consumer can skip one message alone.
    """
    event = _cloudevent(value)
    schema = SCHEMAS.get(event.get_type())
    if schema is None:
        raise BadEventError("unknown_type", f"unknown event type {event.get_type()!r}")
    try:
        parsed = schema.model_validate(_json_data(event))
    except ValidationError as exc:
        raise BadEventError(
            "schema", f"{event.get_type()} does not match its schema: {exc.errors()[0]['msg']}"
        ) from None
    return ReceivedEvent(event_id=event.get_id(), event_type=event.get_type(), source=event.get_source(),
                         data=parsed, topic=topic, partition=partition, offset=offset)


def _cloudevent(value: bytes | None) -> BaseCloudEvent:
    if not value:  # a tombstone (null value) or an empty message
        raise BadEventError("not_cloudevent", "empty message")
    try:
        return from_structured_event(KafkaMessage(headers={}, key=None, value=value))
    # The parser decodes the value as UTF-8, then as JSON, then checks the attributes: its exception says
    # which step failed (tests/events/test_envelope.py pins that down).
    except UnicodeDecodeError as exc:
        raise BadEventError("bad_utf8", f"not UTF-8: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadEventError("bad_json", f"not JSON: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the parser raises several kinds for JSON that is not a CloudEvent
        raise BadEventError(
            "not_cloudevent", f"not a structured CloudEvent: {type(exc).__name__}: {exc}"
        ) from None


def _json_data(event: BaseCloudEvent) -> object:
    """The event's ``data`` as parsed JSON: an object normally; a producer may send it as a string of JSON,
    or as ``data_base64`` bytes. Whatever it parses to is the schema's to accept or refuse."""
    data = event.get_data()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadEventError("bad_utf8", f"{event.get_type()} data is not UTF-8: {exc}") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise BadEventError("bad_json", f"{event.get_type()} data is not JSON: {exc}") from None
    return data
