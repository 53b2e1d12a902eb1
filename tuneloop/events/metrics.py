"""Event-log series (docs/metrics.md), exported by whichever process runs an EventLog."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PRODUCED = Counter("tuneloop_events_produced_total", "Events acknowledged by the broker", ["topic"])
SPOOLED = Counter("tuneloop_events_spooled_total", "Events written to the local spool", ["topic"])
REPLAYED = Counter("tuneloop_events_replayed_total", "Spooled events delivered later", ["topic"])
SEND_ERRORS = Counter("tuneloop_event_send_errors_total", "Failed sends (each is then spooled)", ["topic"])
DROPPED = Counter("tuneloop_events_dropped_total", "Events lost because the spool cap was hit", ["topic"])
SPOOL_BYTES = Gauge("tuneloop_spool_bytes", "Bytes waiting in the spool", multiprocess_mode="livesum")
