"""Unwrapping a message's value: every malformed value is a ``BadEventError`` whose reason names the layer."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured_event

from tests.events.factories import prediction
from tests.events.poison import poison, with_attributes
from tuneloop.events.envelope import unwrap, wrap
from tuneloop.events.errors import BadEventError

GOOD = wrap(prediction(1), "test")
GOOD_DATA = json.dumps(json.loads(GOOD.value)["data"])


@pytest.mark.parametrize(("value", "reason"), [(v, r) for _, v, r in poison(GOOD)],
                         ids=[name for name, _, _ in poison(GOOD)])
def test_each_kind_of_malformed_value_is_a_bad_event_with_its_reason(value: bytes | None,
                                                                     reason: str) -> None:
    with pytest.raises(BadEventError) as raised:
        unwrap(value, "predictions", 0, 7)
    assert raised.value.reason == reason


@pytest.mark.parametrize("value", [
    GOOD.value,
    with_attributes(GOOD, data=GOOD_DATA),
    with_attributes(GOOD, data=None, data_base64=base64.b64encode(GOOD_DATA.encode()).decode()),
], ids=["object", "string of JSON", "data_base64"])
def test_every_encoding_of_the_data_that_holds_the_event_is_read(value: bytes) -> None:
    received = unwrap(value, "predictions", 0, 7)
    assert received.data == prediction(1).model_copy(update={"timestamp": received.data.timestamp})
    assert (received.event_id, received.offset) == (GOOD.event_id, 7)


@pytest.mark.parametrize("value", [
    with_attributes(GOOD, subject="reviews", partitionkey="r1"),  # attributes wrap never writes
    with_attributes(GOOD, data=GOOD_DATA, datacontenttype="text/json"),
], ids=["extensions", "other content type"])
def test_events_off_the_fast_path_read_the_same_as_on_it(value: bytes) -> None:
    """unwrap reads wrap's own layout with orjson and hands anything else to the CloudEvents parser: both
    must give the same event."""
    assert unwrap(value, "predictions", 0, 7) == unwrap(GOOD.value, "predictions", 0, 7)


def test_a_time_the_fast_path_cannot_vet_is_the_cloudevents_parsers_call() -> None:
    with pytest.raises(BadEventError) as raised:
        unwrap(with_attributes(GOOD, time="2026-11-30"), "predictions", 0, 7)  # a date alone
    assert raised.value.reason == "not_cloudevent"


def test_the_cloudevents_sdk_reads_what_wrap_writes() -> None:
    """wrap writes the structured layout by hand: the SDK's own parser is the judge of it."""
    event = from_structured_event(KafkaMessage(headers={}, key=None, value=GOOD.value))
    assert (event.get_id(), event.get_type(), event.get_source()) == (GOOD.event_id, "io.tuneloop.prediction.v1", "test")
    assert event.get_specversion() == "1.0" and event.get_datacontenttype() == "application/json"
    assert event.get_time().tzinfo is not None
    sent = json.loads(prediction(1).model_dump_json())
    assert {**event.get_data(), "timestamp": sent["timestamp"]} == sent
    assert GOOD.key == prediction(1).key().encode()
