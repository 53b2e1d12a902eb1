"""Errors of the event log; producers never raise them into a request, consumers count and skip."""


class EventLogError(Exception):
    """The root of the event log's errors; raised as such for settings it cannot work with."""


class BadEventError(EventLogError):
    """A message on a topic is not a CloudEvent of a schema we know."""


class BrokerError(EventLogError):
    """The broker could not be started, reached or stopped."""
