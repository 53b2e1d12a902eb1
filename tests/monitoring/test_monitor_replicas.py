"""Several monitor replicas in one consumer group, on the suite's real Tansu broker.

The decision (README, "Drift monitoring"): each replica judges its own share of every model version's traffic.
The service keys predictions by request id, so each partition holds a uniform share of each version's
predictions whatever their content: a replica's time window is a valid uniform sample of the version's
traffic, only smaller. Its gauges carry the replica's ``instance`` in Prometheus; the drift alert takes the
``max`` over replicas, and ``sum by (model_version) (tuneloop_drift_window_predictions)`` is the version's
whole traffic per window. One owner per version would need the topic keyed by version, which puts a busy
version on one partition and one replica: the opposite of scaling out.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from monitoring.consume import ConsumeLoop
from monitoring.monitor import DriftMonitor
from monitoring.reference import reference_from_arrays
from monitoring.server import MonitorServer
from tests.fixtures.broker import isolated_settings
from tests.monitoring.stack import DOMAIN_WORDS, LABELS, PrometheusProcess, only_v1, prediction_event, synthetic_rows
from tests.waiting import wait_for
from tuneloop.events.client_config import ensure_topics
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.producer import EventLog
from tuneloop.settings import MonitorSettings

WINDOW_S = 3600.0
PER_WINDOW = 600  # predictions per window, over both partitions: each replica's share stays above the minimum


class Replica:
    """One monitor process's worth: its DriftMonitor, consume loop thread and /metrics."""

    def __init__(self, kafka, group: str, reference) -> None:
        settings = MonitorSettings(window_seconds=WINDOW_S, max_window_sample=200, min_window_sample=100,
                                   drift_end_after=1)
        self.monitor = DriftMonitor(settings, only_v1(reference), keep_reports=False)
        self.consumer = EventConsumer(kafka, ["predictions"], group_id=group)
        self.server = MonitorServer(self.monitor.metrics.registry, self.monitor.reports, "127.0.0.1", 0).start()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=ConsumeLoop(self.monitor).run, args=(self.consumer, self.stop, 300),
                                       daemon=True)
        self.thread.start()

    def value(self, name: str, **labels: str) -> float | None:
        return self.monitor.metrics.registry.get_sample_value(name, labels)

    def partitions(self) -> set[str]:
        """The partitions this replica exports a lag for: the ones it holds."""
        return {s.labels["partition"] for m in self.monitor.metrics.registry.collect()
                if m.name == "tuneloop_monitor_consumer_lag" for s in m.samples}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.consumer.close()
        self.server.stop()


def wait_or_fail(condition, timeout: float, what: str) -> None:
    if not wait_for(condition, timeout, interval=0.2):
        pytest.fail(f"timed out waiting for {what() if callable(what) else what}")


def test_two_replicas_share_the_partitions_and_each_judges_a_valid_sample(tmp_path, kafka_broker):
    rng = np.random.default_rng(41)
    reference = reference_from_arrays("v1", LABELS, synthetic_rows(300, rng))
    kafka = isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool", partitions=2)
    ensure_topics(kafka)
    group = f"monitor-{uuid.uuid4().hex[:8]}"
    replicas = [Replica(kafka, group, reference) for _ in range(2)]
    prometheus = None
    try:
        # Both in the group, one partition each, before any traffic (else the first takes it all).
        wait_or_fail(lambda: all(len(r.partitions()) == 1 for r in replicas)
                 and replicas[0].partitions() | replicas[1].partitions() == {"0", "1"}, 60, "a partition each")
        (tmp_path / "prometheus").mkdir()
        prometheus = PrometheusProcess(tmp_path / "prometheus", {
            f"monitor-{k}": f"127.0.0.1:{r.server.port}" for k, r in enumerate(replicas)}).start()

        # An in-domain window, a drifted one, and the start of a third that closes the second. Timestamped
        # after the clock's current window, so that traffic alone closes them: the clock would close a window
        # whenever a replica has caught up with the producer, part of its traffic still to come.
        start = time.time() + WINDOW_S
        start -= start % WINDOW_S
        log = EventLog(kafka.model_copy(update={"spool_dir": tmp_path / "service-spool"}), source="test-service")
        log.start()
        # Connected before the first publish: events published earlier go to the spool, which close() leaves for
        # the next process to replay, so they would never reach the replicas.
        wait_or_fail(lambda: log.stats()["connected"], 60, "the event log connected to the broker")
        for window, (shift, words, count) in enumerate(((0.0, None, PER_WINDOW), (1.5, DOMAIN_WORDS, PER_WINDOW),
                                                        (1.5, DOMAIN_WORDS, 40))):
            rows = synthetic_rows(count, rng, shift, **({"words": words} if words else {}))
            for i in range(count):
                at = start + window * WINDOW_S + i * WINDOW_S / PER_WINDOW
                event = prediction_event(rows, i).model_copy(update={
                    "request_id": uuid.uuid4().hex, "timestamp": datetime.fromtimestamp(at, timezone.utc)})
                log.publish_prediction(event)  # keyed by request id: spread over both partitions
        assert log.flush(timeout=30) and log.stats()["spooled"] == 0
        log.close()

        observed = lambda r: r.value("tuneloop_monitor_events_total", outcome="observed") or 0  # noqa: E731
        wait_or_fail(lambda: sum(observed(r) for r in replicas) == 2 * PER_WINDOW + 40, 60,
                 lambda: f"every prediction read: {[observed(r) for r in replicas]}")
        # The third window's first prediction closes the drifted one: both replicas judge their share.
        wait_or_fail(lambda: all(r.value("tuneloop_drift_episode_active", model_version="v1") == 1 for r in replicas),
                 60, "drift judged by both replicas")
        shares = [observed(r) for r in replicas]
        assert min(shares) > 0.3 * sum(shares), shares  # each a real share of the traffic
        for replica in replicas:
            # Each replica's window: a sample of its own share, large enough for a verdict.
            assert replica.value("tuneloop_drift_not_enough_data", model_version="v1") == 0
            assert replica.value("tuneloop_monitor_consumer_lag", topic=kafka.predictions_topic,
                                 partition=replica.partitions().pop()) == 0
            assert replica.value("tuneloop_drift_detected", signal="embedding", model_version="v1") == 1

        # In Prometheus, the replicas' windows add up to the version's whole traffic and the alert's max
        # across them sees the drift once.
        def prometheus_sees(expr, expected):
            result = prometheus.query(expr)["data"]["result"]
            return len(result) == 1 and float(result[0]["value"][1]) == expected

        wait_or_fail(lambda: prometheus_sees("sum by (model_version) (tuneloop_drift_window_predictions)",
                                         PER_WINDOW), 30, "the windows' predictions summed over replicas")
        assert prometheus_sees("max by (model_version, signal) (tuneloop_drift_detected{signal='embedding'})", 1)
        assert prometheus_sees("count(tuneloop_monitor_consumer_lag)", 2)  # one series per partition
    finally:
        if prometheus is not None:
            prometheus.stop()
        for replica in replicas:
            replica.close()
