"""One series for every message a reader of the event topics skipped, whichever layer noticed it.

The consumer rejects what is not an event of a known schema (``BAD_EVENT_REASONS``); an application rejects
schema-valid events it cannot use (the monitor: a model version it has no reference for, an embedding of the
wrong width). Both count here, so "how much of this topic is unusable, and why" is one query.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter

REJECTED = Counter("tuneloop_events_rejected_total", "Messages skipped as unusable, by why",
                   ["topic", "reason"])


def declare(topics: Iterable[str], reasons: Iterable[str]) -> None:
    """Create the series at 0, so increase() sees the first rejection and dashboards show a flat line."""
    reasons = tuple(reasons)
    for topic in topics:
        for reason in reasons:
            REJECTED.labels(topic, reason)


def count_rejected(topic: str, reason: str) -> None:
    REJECTED.labels(topic, reason).inc()
