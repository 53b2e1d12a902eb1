"""`tuneloop monitor` end to end on the suite's real Tansu broker: predictions in, drift events and series
out; and its consume loop on the broker, with every kind of poison among the predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from monitoring.consume import ConsumeLoop
from monitoring.monitor import DriftMonitor
from monitoring.reference import reference_from_arrays
from tests.events.poison import poison, rejected, send_raw
from tests.fixtures.broker import isolated_settings
from tests.monitoring.stack import (DOMAIN_WORDS, LABELS, only_v1, prediction_event, synthetic_rows,
                                    unusable_predictions)
from tuneloop.events.broker import free_port
from tuneloop.events.envelope import wrap
from tuneloop.events.client_config import ensure_topics
from tuneloop.events.consumer import EventConsumer
from tuneloop.events.producer import EventLog
from tuneloop.registry import Registry
from tuneloop.registry.card import ModelCard, Timings
from tuneloop.settings import KafkaSettings, MonitorSettings

ROOT = Path(__file__).resolve().parents[2]


def publish_synthetic_version(root: Path, staging: Path, rows: dict) -> str:
    """A registry version holding only what the monitor reads: labels and reference.npz."""
    staging.mkdir(parents=True)
    (staging / "labels.json").write_text(json.dumps({"labels": LABELS}))
    np.savez(staging / "reference.npz", labels=rows["predictions"], **rows)
    card = ModelCard(
        model_name="sentiment",
        base_model="synthetic",
        labels=LABELS,
        strategy="none",
        hyperparameters={},
        data=[],
        splits={},
        metrics={},
        timings=Timings(train_seconds=0, train_samples_per_second=0),
    )
    return Registry(root).publish(staging, card, actor="test", reason="synthetic reference for the monitor")


def test_monitor_cli_consumes_predictions_and_publishes_drift(tmp_path, kafka_broker):
    rng = np.random.default_rng(21)
    version = publish_synthetic_version(tmp_path / "registry", tmp_path / "staging", synthetic_rows(300, rng))
    kafka = isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool", partitions=1)
    ensure_topics(kafka)
    port = free_port()
    env = {
        **os.environ,
        "TUNELOOP_MONITOR__WINDOW_MODE": "count",
        "TUNELOOP_MONITOR__WINDOW_SIZE": "100",
        "TUNELOOP_MONITOR__WINDOW_STEP": "100",
        "TUNELOOP_KAFKA__SPOOL_DIR": str(tmp_path / "spool"),
        "TUNELOOP_KAFKA__PARTITIONS": "1",
        "TUNELOOP_KAFKA__PREDICTIONS_TOPIC": kafka.predictions_topic,
        "TUNELOOP_KAFKA__FEEDBACK_TOPIC": kafka.feedback_topic,
        "TUNELOOP_KAFKA__MODEL_EVENTS_TOPIC": kafka.model_events_topic,
    }
    log = open(tmp_path / "monitor.log", "wb")
    monitor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitoring.cli",
            "monitor",
            "--registry",
            str(tmp_path / "registry"),
            "--bootstrap-servers",
            kafka_broker.bootstrap_servers,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service_log = EventLog(
        kafka.model_copy(update={"spool_dir": tmp_path / "service-spool"}), source="test-service"
    )
    service_log.start()
    try:
        for shift, words in ((0.0, None), (1.5, DOMAIN_WORDS)):
            rows = synthetic_rows(200, rng, shift, **({"words": words} if words else {}))
            for i in range(200):
                service_log.publish_prediction(prediction_event(rows, i, version=version))
        assert service_log.flush(timeout=30)

        reader = EventConsumer(kafka, ["model-events"], group_id="test-reader")
        deadline = time.monotonic() + 120
        events = []
        while time.monotonic() < deadline and not events:
            if monitor.poll() is not None:
                pytest.fail(f"monitor exited: {(tmp_path / 'monitor.log').read_text()[-3000:]}")
            events = [e.data for e in reader.poll(timeout_ms=1000).events if e.data.kind == "drift_started"]
        reader.close()
        assert events, (tmp_path / "monitor.log").read_text()[-3000:]
        assert events[0].version == version and events[0].model_name == "sentiment"
        assert "embedding" in events[0].transition

        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert f'tuneloop_drift_detected{{model_version="{version}",signal="embedding"}} 1.0' in metrics
        assert 'tuneloop_monitor_events_total{outcome="observed"} 400.0' in metrics
        assert "tuneloop_spool_bytes" in metrics  # the monitor's own event log, from the process registry
        assert httpx.get(f"http://127.0.0.1:{port}/reports?format=json", timeout=5).json()
    finally:
        service_log.close()
        if monitor.poll() is None:
            os.killpg(monitor.pid, signal.SIGTERM)
        code = monitor.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "monitor.log").read_text()[-3000:]


def test_consume_loop_skips_each_poison_event_alone_and_observes_every_good_one(
    event_settings: KafkaSettings,
):
    rng = np.random.default_rng(22)
    reference = reference_from_arrays("v1", LABELS, synthetic_rows(200, rng))
    rows = synthetic_rows(60, rng)
    goods = [wrap(prediction_event(rows, i), "test").value for i in range(60)]
    bad = [(value, reason) for _, value, reason in poison(wrap(prediction_event(rows, 0), "test"))]
    bad += [(wrap(event, "test").value, reason) for event, reason in unusable_predictions(rows, 1)]
    values: list[bytes | None] = []
    for i, good in enumerate(goods):  # a poison message after each of the first goods, in one partition
        values += [good, *([bad[i][0]] if i < len(bad) else [])]
    send_raw(event_settings, values, topic=event_settings.predictions_topic)

    monitor = DriftMonitor(
        MonitorSettings(window_mode="count", window_size=20, window_step=20), only_v1(reference), keep_reports=False
    )
    counted = monitor.metrics.registry.get_sample_value
    consumer = EventConsumer(event_settings, ["predictions"], group_id=f"monitor-{uuid.uuid4().hex[:8]}")
    stop = threading.Event()
    loop = threading.Thread(target=ConsumeLoop(monitor).run, args=(consumer, stop, 500), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 60
        observed = {"outcome": "observed"}
        while time.monotonic() < deadline and counted("tuneloop_monitor_events_total", observed) < 60:
            time.sleep(0.2)
    finally:
        stop.set()
        loop.join(timeout=30)
        consumer.close()
    assert not loop.is_alive()
    assert counted("tuneloop_monitor_events_total", {"outcome": "observed"}) == 60
    assert rejected(event_settings.predictions_topic) == dict(Counter(reason for _, reason in bad))
    # Three windows of good rows, each read by every signal: no wrong-width embedding got into one.
    assert counted("tuneloop_monitor_errors_total", {"kind": "signal_failed"}) == 0
    assert counted("tuneloop_drift_evaluation_duration_seconds_count", {"signal": "embedding"}) == 3
