"""Event-log series (docs/metrics.md), exported by whichever process runs an EventLog."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from tuneloop.metric_series import series_of

PRODUCED = Counter("tuneloop_events_produced_total", "Events acknowledged by the broker", ["topic"])
SPOOLED = Counter("tuneloop_events_spooled_total", "Events written to the local spool", ["topic"])
REPLAYED = Counter("tuneloop_events_replayed_total", "Spooled events delivered later", ["topic"])
SEND_ERRORS = Counter("tuneloop_event_send_errors_total", "Failed sends (each is then spooled)", ["topic"])
DROPPED = Counter("tuneloop_events_dropped_total",
                  "Events lost: the spool cap was hit or the disk refused the write", ["topic"])
# livesum: a dead process's share drops out, and reappears in the process that adopts its folder.
SPOOL_BYTES = Gauge("tuneloop_spool_bytes",
                    "Bytes waiting in this process's spool folders (its own and adopted ones)",
                    multiprocess_mode="livesum")

# What can become of an event, by the name EventLog.stats() gives it: each counter's series looked up once per topic.
OUTCOMES = {"produced": series_of(PRODUCED), "spooled": series_of(SPOOLED), "replayed": series_of(REPLAYED),
            "send_errors": series_of(SEND_ERRORS), "dropped": series_of(DROPPED)}
