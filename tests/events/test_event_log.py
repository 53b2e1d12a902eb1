"""The event log against a real broker: round trips, outages, crashes, the spool's cap, duplicates."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from tests.events.conftest import consume_until
from tuneloop.events.broker import TansuBroker
from tuneloop.events.envelope import unwrap, wrap
from tuneloop.events.metrics import DROPPED
from tuneloop.events.producer import EventLog
from tuneloop.events.schemas import FeedbackEvent, ModelEvent, PredictionEvent, encode_embedding
from tuneloop.events.spool import Spool
from tuneloop.settings import KafkaSettings


def prediction(i: int) -> PredictionEvent:
    return PredictionEvent(request_id=f"{i:032x}", model_name="sentiment", model_version="v1", input_mode="text",
                           text=f"text {i}", text_length=6, label=str(i % 2),
                           probabilities={"0": 0.3, "1": 0.7}, embedding=encode_embedding(np.full(8, i / 10)),
                           latency_ms=1.5)


def feedback(i: int) -> FeedbackEvent:
    return FeedbackEvent(request_id=f"{i:032x}", label=str(i % 2), source="test")


def test_predictions_feedback_and_model_events_round_trip(broker: TansuBroker, kafka_settings: KafkaSettings) -> None:
    broker.start()
    log = EventLog(kafka_settings)
    log.start()
    for i in range(20):
        log.publish_prediction(prediction(i))
        log.publish_feedback(feedback(i))
    log.publish_model_event(ModelEvent(kind="swap", version="v1", actor="test", reason="round trip"))
    assert log.flush(30)
    got = consume_until(kafka_settings, ["predictions", "feedback", "model-events"], 41)
    by_type = {t: [e for e in got if e.event_type == t] for t in {e.event_type for e in got}}
    assert len(by_type["io.tuneloop.prediction.v1"]) == 20
    assert len(by_type["io.tuneloop.feedback.v1"]) == 20
    assert by_type["io.tuneloop.model.v1"][0].data.kind == "swap"
    first = next(e.data for e in by_type["io.tuneloop.prediction.v1"] if e.data.request_id == f"{3:032x}")
    np.testing.assert_allclose(first.embedding_vector(), np.full(8, 0.3), atol=1e-3)  # float16 on the wire
    assert {e.data.request_id for e in by_type["io.tuneloop.feedback.v1"]} == {f"{i:032x}" for i in range(20)}
    log.close()


def test_broker_absent_at_start_then_every_event_arrives(broker: TansuBroker, kafka_settings: KafkaSettings) -> None:
    log = EventLog(kafka_settings, reconnect_interval_s=0.2)
    log.start()
    for i in range(300):  # publishing with no broker returns at once: it only queues
        log.publish_feedback(feedback(i))
    assert log.flush(30)
    assert log.stats()["spool_bytes"] > 0 and not log.stats()["connected"]
    broker.start()
    got = consume_until(kafka_settings, ["feedback"], 300)
    ids = [e.data.request_id for e in got]
    assert sorted(ids) == sorted(f"{i:032x}" for i in range(300))  # all there, none twice
    deadline = time.monotonic() + 10
    while log.stats()["spool_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.stats()["spool_bytes"] == 0
    log.close()


def test_broker_killed_mid_stream_and_restarted(broker: TansuBroker, kafka_settings: KafkaSettings) -> None:
    broker.start()
    log = EventLog(kafka_settings, reconnect_interval_s=0.2)
    log.start()
    for i in range(50):
        log.publish_feedback(feedback(i))
    assert log.flush(30)
    broker.kill()  # Tansu keeps events in memory: these first 50 die with it, by its design
    for i in range(50, 250):  # published during the outage and while it comes back
        log.publish_feedback(feedback(i))
        if i == 150:
            broker.start()
    got = consume_until(kafka_settings, ["feedback"], 200)
    ids = {e.data.request_id for e in got}
    assert ids >= {f"{i:032x}" for i in range(50, 250)}  # at least once: every post-kill event arrived
    assert len(got) == len(ids)  # the consumer dropped any duplicate
    log.close()


def test_killed_service_replays_its_spool_on_restart(broker: TansuBroker, kafka_settings: KafkaSettings,
                                                     tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.events.test_event_log import feedback
        from tuneloop.events.producer import EventLog
        from tuneloop.settings import KafkaSettings
        log = EventLog(KafkaSettings(bootstrap_servers={kafka_settings.bootstrap_servers!r},
                                     spool_dir={str(kafka_settings.spool_dir)!r}, spool_fsync="always"))
        log.start()
        for i in range(120):
            log.publish_feedback(feedback(i))
        assert log.flush(30)
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no goodbye
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert list(kafka_settings.spool_dir.glob("*.spool"))
    broker.start()
    log = EventLog(kafka_settings, reconnect_interval_s=0.2)  # the restarted service
    log.start()
    got = consume_until(kafka_settings, ["feedback"], 120)
    assert sorted(e.data.request_id for e in got) == sorted(f"{i:032x}" for i in range(120))
    log.close()


def test_spool_cap_drops_loudly_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", spool_dir=tmp_path / "spool", spool_max_bytes=5000)
    before = DROPPED.labels("tuneloop.feedback")._value.get()
    log = EventLog(settings)
    log.start()
    with caplog.at_level(logging.ERROR):
        for i in range(100):
            log.publish_feedback(feedback(i))
        assert log.flush(30)
    dropped = DROPPED.labels("tuneloop.feedback")._value.get() - before
    assert dropped > 0 and log.spool.bytes <= 5000
    assert dropped + sum(len(log.spool.read_segment(p)) for p in log.spool.sealed_segments()) + \
        log.spool._active_records == 100
    assert "EVENT SPOOL FULL" in caplog.text
    log.close()


def test_torn_record_at_the_end_of_a_segment_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(5):
        spool.append(wrap(feedback(i), "test"))
    spool.seal()
    segment = spool.sealed_segments()[0]
    segment.write_bytes(segment.read_bytes()[:-7])  # a crash in the middle of the last write
    assert [unwrap(e.value).data.request_id for e in spool.read_segment(segment)] == \
        [f"{i:032x}" for i in range(4)]


def test_consumer_drops_duplicates_and_skips_bad_messages(broker: TansuBroker,
                                                           kafka_settings: KafkaSettings) -> None:
    broker.start()
    from tuneloop.events.client_config import ensure_topics

    ensure_topics(kafka_settings)
    envelope = wrap(feedback(7), "test")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for value in (envelope.value, envelope.value, b"not a cloudevent", envelope.value):
        producer.send(kafka_settings.feedback_topic, key=envelope.key, value=value)
    producer.send(kafka_settings.feedback_topic, key=b"x", value=wrap(feedback(8), "test").value)
    producer.flush()
    producer.close()
    got = consume_until(kafka_settings, ["feedback"], 2)
    assert sorted(e.data.request_id for e in got) == [f"{7:032x}", f"{8:032x}"]
