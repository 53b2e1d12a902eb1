"""Malformed messages of every kind, raw sends to a topic, and the rejected-messages series: for the tests
that check a poison message is skipped alone."""

from __future__ import annotations

import base64
import json
import re

from kafka import KafkaProducer
from prometheus_client import REGISTRY

from tuneloop.events.client_config import ensure_topics
from tuneloop.events.envelope import Envelope
from tuneloop.settings import KafkaSettings


def with_attributes(good: Envelope, **attributes: object) -> bytes:
    """The good event with some of its top-level attributes replaced (None: removed)."""
    event = json.loads(good.value)
    for name, value in attributes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return json.dumps(event).encode()


def poison(good: Envelope) -> list[tuple[str, bytes | None, str]]:
    """(name, value, reason) of every kind of malformed message, built around a good event's value."""
    data = json.loads(good.value)["data"]
    return [
        ("invalid UTF-8", re.sub(rb'"data":\s*\{', b'"data": {"\xff\xfe": 1, ', good.value, count=1), "bad_utf8"),
        ("data_base64 not UTF-8", with_attributes(good, data=None, data_base64=base64.b64encode(b"\xff\xfe").decode()),
         "bad_utf8"),
        ("not JSON", b"not json", "bad_json"),
        ("truncated JSON", good.value[: len(good.value) // 2], "bad_json"),
        ("JSON nested too deep", b"[" * 200_000, "bad_json"),
        ("data a string of not JSON", with_attributes(good, data="not json"), "bad_json"),
        ("tombstone", None, "not_cloudevent"),
        ("empty", b"", "not_cloudevent"),
        ("a JSON array", b"[1, 2]", "not_cloudevent"),
        ("a JSON string", b'"io.tuneloop.prediction.v1"', "not_cloudevent"),
        ("JSON null", b"null", "not_cloudevent"),
        ("no CloudEvent attributes", b"{}", "not_cloudevent"),
        ("no source", with_attributes(good, source=None), "not_cloudevent"),
        ("time not a time", with_attributes(good, time="yesterday"), "not_cloudevent"),
        ("unknown type", with_attributes(good, type="io.tuneloop.nope.v1"), "unknown_type"),
        ("data lacks a field", with_attributes(good, data={k: v for k, v in data.items() if k != "label"}), "schema"),
        ("data a string of a JSON array", with_attributes(good, data="[1, 2]"), "schema"),
        ("data a JSON string", with_attributes(good, data=json.dumps("a string")), "schema"),
        ("no data", with_attributes(good, data=None), "schema"),
        ("text logged against input_mode", with_attributes(good, data={**data, "input_mode": "hash"}), "schema"),
    ]


def send_raw(settings: KafkaSettings, values: list[bytes | None], topic: str | None = None) -> None:
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    for value in values:
        # One key: one partition, in order.
        producer.send(topic or settings.feedback_topic, key=b"k", value=value)
    producer.flush()
    producer.close()


def rejected(topic: str) -> dict[str, float]:
    """tuneloop_events_rejected_total of one topic, by reason (the reasons still at 0 left out)."""
    return {
        sample.labels["reason"]: sample.value
        for family in REGISTRY.collect() if family.name == "tuneloop_events_rejected"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["topic"] == topic and sample.value
    }
