"""Events ↔ Kafka messages: CloudEvents 1.0 in structured JSON mode (the whole event in the value)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured_event
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
    """``data`` as a structured CloudEvent 1.0: the attributes and the data in one JSON object.

    Written directly rather than through the CloudEvents SDK, whose event object and serialiser cost ~55 µs an
    event (the data dumped, parsed back and dumped again; the attributes validated), more than the rest of
    an event's way to the broker. The layout is the SDK's, which reads it back (tests/events/test_envelope.py).
    """
    event_id = str(uuid.uuid4())
    value = orjson.dumps({
        "specversion": "1.0", "id": event_id, "source": source, "type": data.event_type,
        "datacontenttype": "application/json",
        "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": orjson.Fragment(data.model_dump_json()),
    })
    return Envelope(kind=data.topic_kind, key=data.key().encode(), value=value, event_id=event_id)


def as_envelope(item: EventData | Envelope, source: str) -> Envelope:
    """``item`` as a CloudEvent: wrapped here, or as it came when a serving process wrapped it already (a shipped
    event log's shipper receives envelopes; both logs' spools take either)."""
    return item if isinstance(item, Envelope) else wrap(item, source)


def unwrap(value: bytes | None, topic: str = "", partition: int = -1, offset: int = -1) -> ReceivedEvent:
    """The event in a message's value; ``BadEventError`` (with its ``reason``) for anything else.

    Every way a value can be malformed ends in ``BadEventError``, so a consumer can skip one message alone.
    """
    plain = _plain_event(value)
    if plain is not None:
        event_id, event_type, source, data = plain
    else:
        event = _cloudevent(value)
        event_id, event_type, source = event.get_id(), event.get_type(), event.get_source()
        data = _json_data(event)
    schema = SCHEMAS.get(event_type)
    if schema is None:
        raise BadEventError("unknown_type", f"unknown event type {event_type!r}")
    try:
        parsed = schema.model_validate(data)
    except ValidationError as exc:
        raise BadEventError(
            "schema", f"{event_type} does not match its schema: {exc.errors()[0]['msg']}"
        ) from None
    return ReceivedEvent(event_id=event_id, event_type=event_type, source=source,
                         data=parsed, topic=topic, partition=partition, offset=offset)


# The attributes ``wrap`` writes. An event with others (extensions, subject, dataschema) takes the full parser.
_PLAIN_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "datacontenttype", "time", "data"})


def _plain_event(value: bytes | None) -> tuple[str, str, str, Any] | None:
    """(id, type, source, data) of an event exactly as ``wrap`` writes them, or None for anything else.

    The CloudEvents SDK's parser cost ~40 µs an event (most of it dateutil parsing ``time``), which capped a
    consumer near 8,000 events/s (bench/results/monitor-consume.md). This reads the common case with orjson
    and checks what the parser would; anything unusual — not JSON to orjson, other attributes, another
    content type, a ``time`` fromisoformat refuses — goes to the full parser, which decides and names the
    reason, so a malformed message is refused exactly as before.
    """
    if not value:
        return None
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if (not isinstance(event, dict) or event.get("specversion") != "1.0" or not _PLAIN_ATTRIBUTES.issuperset(event)
            or event.get("datacontenttype", "application/json") != "application/json"):
        return None
    event_id, event_type, source = event.get("id"), event.get("type"), event.get("source")
    if not (isinstance(event_id, str) and isinstance(event_type, str) and isinstance(source, str)
            and event_id and event_type and source):
        return None
    stamp = event.get("time")
    if stamp is not None:
        if not isinstance(stamp, str) or "T" not in stamp:
            return None
        try:
            datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return None
    data = event.get("data")
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    elif not isinstance(data, dict):
        return None
    return event_id, event_type, source, data


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
