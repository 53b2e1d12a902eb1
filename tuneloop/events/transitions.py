"""Registry transitions as model events: every change of a version's state, from the CLI or the adapter, is
published on ``tuneloop.model-events`` with who made it and why (``Registry.listeners``)."""

from __future__ import annotations

from tuneloop.events.producer import EventLog
from tuneloop.events.schemas import ModelEvent
from tuneloop.registry.journal import AuditEntry


def transition_event(entry: AuditEntry) -> ModelEvent:
    return ModelEvent(kind="transition", version=entry.version, actor=entry.actor, reason=entry.reason,
                      transition=f"{entry.from_state or 'none'}->{entry.to_state}")


class TransitionPublisher:
    """A registry listener publishing each audit entry through an event log (which never blocks: an absent
    broker means the events wait in its spool)."""

    def __init__(self, events: EventLog) -> None:
        self.events = events

    def __call__(self, entries: list[AuditEntry]) -> None:
        for entry in entries:
            self.events.publish_model_event(transition_event(entry))
