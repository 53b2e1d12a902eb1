"""The service's Prometheus series (names: docs/metrics.md). BentoML serves them on /metrics.

BentoML runs workers as separate processes with prometheus_client's multiprocess mode, so every
gauge says how its per-process values combine.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

from tuneloop.metric_series import series_of

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)

REQUESTS = Counter("tuneloop_requests_total", "Requests answered, by route and status", ["route", "status"])
REQUEST_DURATION = Histogram("tuneloop_request_duration_seconds", "Time from request to response",
                             ["route"], buckets=LATENCY_BUCKETS)
INFLIGHT = Gauge("tuneloop_inflight_requests", "Requests being answered now", multiprocess_mode="livesum")
# Overload is refused early (413 for a body over the limit, 503 / RESOURCE_EXHAUSTED at a full queue), and a
# request whose client gave up is dropped before the model runs it: these say how often.
REJECTED = Counter("tuneloop_requests_rejected_total", "Requests refused before any work, by reason",
                   ["reason"])
DROPPED = Counter("tuneloop_requests_dropped_total",
                  "Requests taken off the queue unrun: their client went away or its deadline passed")
QUEUED_TEXTS = Gauge("tuneloop_queued_texts", "Texts waiting for the model, not yet taken into a batch",
                     multiprocess_mode="livesum")
INFERENCE_DURATION = Histogram("tuneloop_inference_duration_seconds", "One session.run on one batch",
                               ["model_version"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("tuneloop_batch_size", "Texts per session.run", ["model_version"], buckets=BATCH_BUCKETS)
PREDICTIONS = Counter("tuneloop_predictions_total", "Predictions made", ["model_version", "label"])
MODEL_INFO = Gauge("tuneloop_model_info", "The model being served",
                   ["model_name", "model_version", "provider", "precision"], multiprocess_mode="livemax")
MODEL_LOADED_AT = Gauge("tuneloop_model_loaded_timestamp_seconds", "When the served version was loaded",
                        multiprocess_mode="livemax")
SWAPS = Counter("tuneloop_model_swaps_total", "Successful hot swaps")
SWAP_FAILURES = Counter("tuneloop_model_swap_failures_total", "Hot swaps refused", ["reason"])


# Recorded per request or per batch: looked up once per label values.
REQUESTS_BY = series_of(REQUESTS)
REQUEST_DURATION_BY = series_of(REQUEST_DURATION)
INFERENCE_DURATION_BY = series_of(INFERENCE_DURATION)
BATCH_SIZE_BY = series_of(BATCH_SIZE)
PREDICTIONS_BY = series_of(PREDICTIONS)


def initialise_series(routes: dict[str, tuple[str, ...]], swap_failure_reasons: tuple[str, ...]) -> None:
    """Expose zero-valued series for the outcomes alerts and dashboards watch, so that "no errors yet"
    reads as 0 rather than as no data (an absent series never fires an alert and blanks a panel)."""
    for route, statuses in routes.items():
        for status in statuses:
            REQUESTS.labels(route, status)
        REQUEST_DURATION.labels(route)
    for reason in swap_failure_reasons:
        SWAP_FAILURES.labels(reason)


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges (spool bytes, requests in flight, the served model) of worker processes that are
    gone. BentoML never clears a dead worker's files, and inside a container it does not replace the worker,
    so its last values would stay in every sum and keep alerts such as TuneloopEventsSpooling firing."""
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, under another user
            pass


def render_metrics() -> tuple[bytes, str]:
    """The exposition text of every series, summed over BentoML's worker processes when it runs several."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        forget_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
