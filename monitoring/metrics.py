"""The monitor's Prometheus series (names as in docs/metrics.md), on a registry of its own.

A registry per monitor, not the process-global one, so tests and benchmarks can run several monitors in one
process and a version's series can be dropped when the version goes idle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Evidently runs take ~20 ms (one column) to seconds (t-SNE maps).
EVENT_OUTCOMES = ("observed", "undecodable", "no_reference")
# A failing consume step is counted by its supervisor: tuneloop_background_errors_total{thread}.
ERROR_KINDS = ("signal_failed", "reference_unavailable", "event_publish_failed")
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.score = Gauge(
            "tuneloop_drift_score",
            "The drift signal's score on the last window.",
            ["signal", "model_version"],
            registry=r,
        )
        self.threshold = Gauge(
            "tuneloop_drift_threshold",
            "The threshold the drift score is compared with.",
            ["signal", "model_version"],
            registry=r,
        )
        self.detected = Gauge(
            "tuneloop_drift_detected",
            "1 when the score crossed the threshold on the last window.",
            ["signal", "model_version"],
            registry=r,
        )
        self.window_fill = Gauge(
            "tuneloop_drift_window_fill",
            "Share of the current window filled (0-1). Time windows: predictions so far over the minimum "
            "sample for a verdict. Count windows: rows before the first evaluation, then progress towards "
            "the next one.",
            ["model_version"],
            registry=r,
        )
        self.window_predictions = Gauge(
            "tuneloop_drift_window_predictions",
            "Predictions the last closed time window counted (its evaluated sample is at most "
            "monitor.max_window_sample of them).",
            ["model_version"],
            registry=r,
        )
        self.not_enough_data = Gauge(
            "tuneloop_drift_not_enough_data",
            "1 when the last time window closed with fewer predictions than monitor.min_window_sample: "
            "no verdict, the drift gauges keep the last one.",
            ["model_version"],
            registry=r,
        )
        self.window_seconds = Gauge(
            "tuneloop_monitor_window_seconds",
            "The span of a time window (monitor.window_seconds); 0 with count windows.",
            registry=r,
        )
        self.window_size = Gauge(
            "tuneloop_monitor_window_size",
            "Predictions per count window (monitor.window_size); 0 with time windows.",
            registry=r,
        )
        self.last_evaluation = Gauge(
            "tuneloop_drift_last_evaluation_timestamp_seconds",
            "When the last window was evaluated.",
            ["model_version"],
            registry=r,
        )
        self.duration = Histogram(
            "tuneloop_drift_evaluation_duration_seconds",
            "Time one evaluation took.",
            ["signal"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.episode = Gauge(
            "tuneloop_drift_episode_active",
            "1 from the window that raised drift until drift_end_after clean windows in a row.",
            ["model_version"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "tuneloop_monitor_consumer_lag",
            "Prediction events on the partition that this monitor has not read yet.",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            "tuneloop_monitor_consumer_lag_seconds",
            "How far behind the partition the monitor reads: age of the last event it read while events "
            "wait behind it, 0 when it has read everything.",
            ["topic", "partition"],
            registry=r,
        )
        self.events = Counter(
            "tuneloop_monitor_events_total",
            "Prediction events consumed, by what became of them.",
            ["outcome"],
            registry=r,
        )
        self.errors = Counter(
            "tuneloop_monitor_errors_total", "Monitor failures, by kind.", ["kind"], registry=r
        )
        self._lag_partitions: set[tuple[str, str]] = set()
        # Series exist from the start at 0: increase() sees the first event, dashboards show a flat line.
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)

    def set_lag(self, lags: Mapping[Any, Any], now: float) -> None:
        """Export ``EventConsumer.lag()``; partitions this replica no longer holds lose their series (their
        new owner exports them)."""
        held = set()
        for partition, lag in lags.items():
            labels = (partition.topic, str(partition.partition))
            held.add(labels)
            self.consumer_lag.labels(*labels).set(lag.messages)
            behind = now - lag.last_timestamp if lag.messages and lag.last_timestamp is not None else 0.0
            self.consumer_lag_seconds.labels(*labels).set(max(0.0, behind))
        for labels in self._lag_partitions - held:
            for gauge in (self.consumer_lag, self.consumer_lag_seconds):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        self._lag_partitions = held

    def rejected(self, reason: str) -> None:
        """One prediction skipped: ``no_reference`` for a version without one, ``undecodable`` otherwise."""
        self.events.labels("no_reference" if reason == "unknown_version" else "undecodable").inc()

    def forget_version(self, version: str, signals: list[str]) -> None:
        for gauge in (self.score, self.threshold, self.detected):
            for signal in signals:
                try:
                    gauge.remove(signal, version)
                except KeyError:
                    pass
        for gauge in (self.window_fill, self.last_evaluation, self.episode, self.window_predictions,
                      self.not_enough_data):
            try:
                gauge.remove(version)
            except KeyError:
                pass
