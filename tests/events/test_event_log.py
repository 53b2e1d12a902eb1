"""EventLog against a real broker: round trips, outages, a killed broker, a killed producer, close()."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.events.conftest import spooled_ids
from tests.events.factories import feedback, prediction, request_id
from tests.fixtures.broker import consume_until, isolated_settings
from tests.waiting import wait_for
from tuneloop.events.broker import TansuBroker, free_port
from tuneloop.events.producer import EventLog
from tuneloop.events.schemas import ModelEvent, PredictionEvent
from tuneloop.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


def test_predictions_feedback_and_model_events_round_trip(event_settings: KafkaSettings) -> None:
    log = EventLog(event_settings, source="test-service")
    log.start()
    # Events published before the first connection are spooled and replayed (other tests); wait, so
    # that this one checks the direct path.
    assert wait_for(lambda: log.stats()["connected"])
    for i in range(20):
        log.publish_prediction(prediction(i))
        log.publish_feedback(feedback(i))
    log.publish_model_event(ModelEvent(kind="drift_started", version="v1", transition="embedding",
                                       actor="monitor", reason="score 0.9 > 0.7"))
    assert log.flush(30)
    assert log.stats()["produced"] == 41 and log.stats()["spooled"] == 0
    got = consume_until(event_settings, ["predictions", "feedback", "model-events"], 41)
    log.close()

    assert len({e.event_id for e in got}) == len(got) == 41  # each event once, each with its own id
    assert {e.source for e in got} == {"test-service"}
    by_type: dict[str, list] = {}
    for e in got:
        by_type.setdefault(e.event_type, []).append(e)
    assert {e.data.request_id for e in by_type["io.tuneloop.prediction.v1"]} == {request_id(i) for i in range(20)}
    assert {e.data.request_id for e in by_type["io.tuneloop.feedback.v1"]} == {request_id(i) for i in range(20)}
    [model_event] = by_type["io.tuneloop.model.v1"]
    assert (model_event.data.kind, model_event.topic) == ("drift_started", event_settings.model_events_topic)
    three: PredictionEvent = next(e.data for e in by_type["io.tuneloop.prediction.v1"]
                                  if e.data.request_id == request_id(3))
    assert three == prediction(3).model_copy(update={"timestamp": three.timestamp})
    np.testing.assert_allclose(three.embedding_vector(), np.full(8, 0.3), atol=1e-3)  # float16 on the wire


def test_broker_absent_at_start_then_every_event_arrives(own_broker: TansuBroker, tmp_path: Path) -> None:
    settings = isolated_settings(own_broker.bootstrap_servers, tmp_path / "spool")
    log = EventLog(settings, reconnect_interval_s=0.2)
    log.start()  # returns although nothing listens on the port
    for i in range(300):  # with no broker, publishing only queues
        log.publish_feedback(feedback(i))
    assert log.flush(30)
    assert log.stats()["spooled"] == 300 and not log.stats()["connected"]
    waiting = spooled_ids(settings.spool_dir)
    assert len(waiting) == 300
    own_broker.start()
    got = consume_until(settings, ["feedback"], 300)
    assert sorted(e.event_id for e in got) == sorted(waiting)  # the very events spooled, none lost, none twice
    assert sorted(e.data.request_id for e in got) == sorted(request_id(i) for i in range(300))
    assert wait_for(lambda: log.stats()["spool_bytes"] == 0)
    assert log.stats()["replayed"] == 300
    assert not list(settings.spool_dir.rglob("*.spool"))  # segments go once every event in them was acked
    log.close()


def test_broker_killed_mid_stream_and_restarted(kafka_broker_control: TansuBroker, tmp_path: Path) -> None:
    broker = kafka_broker_control
    settings = isolated_settings(broker.bootstrap_servers, tmp_path / "spool")
    log = EventLog(settings, reconnect_interval_s=0.2)
    log.start()
    assert wait_for(lambda: log.stats()["connected"])
    for i in range(50):
        log.publish_feedback(feedback(i))
    assert log.flush(30) and log.stats()["produced"] == 50
    broker.kill()
    # Tansu keeps events in memory, so these 50 acknowledged events die with it: that is the broker's
    # durability, not the event log's. What the event log owes: every event published from here on.
    for i in range(50, 250):
        log.publish_feedback(feedback(i))
        if i == 150:
            broker.start()
    got = consume_until(settings, ["feedback"], 200)
    received = [e.data.request_id for e in got]
    assert set(received) >= {request_id(i) for i in range(50, 250)}  # at least once: none published after the kill lost
    assert set(received) <= {request_id(i) for i in range(250)}
    assert len(received) == len(set(received))  # a replayed duplicate reaches the caller at most once
    assert wait_for(lambda: log.stats()["spool_bytes"] == 0)
    stats = log.stats()
    assert stats["spooled"] > 0 and stats["replayed"] >= stats["spooled"]  # the outage went through the spool
    assert stats["dropped"] == 0
    log.close()


def test_killed_producer_process_leaves_a_spool_that_a_new_one_replays(event_settings: KafkaSettings) -> None:
    # The first process talks to a port nobody listens on, so everything it publishes goes to its spool.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.events.factories import feedback
        from tuneloop.events.producer import EventLog
        from tuneloop.settings import KafkaSettings
        log = EventLog(KafkaSettings(bootstrap_servers="127.0.0.1:{free_port()}",
                                     spool_dir={str(event_settings.spool_dir)!r}, spool_fsync="always"))
        log.start()
        for i in range(120):
            log.publish_feedback(feedback(i))
        assert log.flush(30) and log.stats()["spooled"] == 120
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no goodbye
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    waiting = spooled_ids(event_settings.spool_dir)
    assert len(waiting) == 120

    log = EventLog(event_settings, reconnect_interval_s=0.2)  # the restarted service, broker reachable now
    assert log.stats()["spooling"]  # it knows before connecting that older events wait
    log.start()
    got = consume_until(event_settings, ["feedback"], 120)
    assert sorted(e.event_id for e in got) == sorted(waiting)
    assert wait_for(lambda: log.stats()["spool_bytes"] == 0)
    log.close()


def test_close_spools_what_the_broker_did_not_take(event_settings: KafkaSettings, tmp_path: Path) -> None:
    unreachable = event_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}",
                                                    "queue_size": 5})
    log = EventLog(unreachable)  # never started: nothing drains the queue
    for i in range(50):
        log.publish_prediction(prediction(i))  # the queue takes 5, the rest overflow to the spool at once
    assert log.stats()["queued"] == 5 and log.stats()["spooled"] == 45
    log.close(timeout=2)
    log.publish_prediction(prediction(50))  # after close: still not lost
    assert len(spooled_ids(event_settings.spool_dir)) == 51

    log = EventLog(event_settings, reconnect_interval_s=0.2)
    log.start()
    got = consume_until(event_settings, ["predictions"], 51)
    assert sorted(e.data.request_id for e in got) == sorted(request_id(i) for i in range(51))
    log.close()
