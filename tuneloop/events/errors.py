"""Errors of the event log; producers never raise them into a request, consumers count and skip."""

from __future__ import annotations

from typing import Literal, get_args

# Why a message is not an event we can read: the label of tuneloop_events_rejected_total{reason}. One name per
# layer the message failed, outermost first, so a dashboard tells a wrong producer from a wrong schema.
BadEventReason = Literal["bad_utf8", "bad_json", "not_cloudevent", "unknown_type", "schema"]
BAD_EVENT_REASONS: tuple[BadEventReason, ...] = get_args(BadEventReason)


class EventLogError(Exception):
    """The root of the event log's errors; raised as such for settings it cannot work with."""


class BadEventError(EventLogError):
    """A message on a topic is not a CloudEvent of a schema we know; ``reason`` says which layer it failed."""

    def __init__(self, reason: BadEventReason, message: str) -> None:
        super().__init__(message)
        self.reason: BadEventReason = reason


class BrokerError(EventLogError):
    """The broker could not be started, reached or stopped."""
