"""Unwrapping a message's value: every malformed value is a ``BadEventError`` whose reason names the layer."""

from __future__ import annotations

import base64
import json

import pytest

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
