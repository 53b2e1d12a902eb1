"""ShippedEventLog against a real broker: the producer in a shipper process, a killed shipper, a shipper that
cannot start, a broker that is down when the log closes."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from tests.events.conftest import spooled_ids
from tests.events.factories import feedback, prediction, request_id
from tests.fixtures.broker import consume_until
from tests.waiting import wait_for
from tuneloop.events.broker import free_port
from tuneloop.events.errors import EventLogError
from tuneloop.events.schemas import ModelEvent
from tuneloop.events.shipper import ShippedEventLog
from tuneloop.settings import KafkaSettings


def test_events_reach_the_broker_through_a_shipper_process(event_settings: KafkaSettings) -> None:
    log = ShippedEventLog(event_settings, source="test-service")
    log.start()
    for i in range(30):
        log.publish_prediction(prediction(i))
        log.publish_feedback(feedback(i))
    log.publish_model_event(ModelEvent(kind="swap", version="v2", actor="test", reason="promoted"))
    assert log.flush(30)
    shipper = log.stats()["shipper_pid"]
    assert shipper is not None and shipper != os.getpid()
    got = consume_until(event_settings, ["predictions", "feedback", "model-events"], 61)
    log.close()

    assert len({e.event_id for e in got}) == len(got) == 61  # each once
    assert {e.source for e in got} == {"test-service"}  # wrapped here, under this process's name
    predictions = [e.data for e in got if e.event_type == "io.tuneloop.prediction.v1"]
    assert sorted(p.request_id for p in predictions) == [request_id(i) for i in range(30)]
    three = next(p for p in predictions if p.request_id == request_id(3))
    assert three == prediction(3).model_copy(update={"timestamp": three.timestamp})
    assert not _alive(shipper)  # close() ended it
    assert not list(event_settings.spool_dir.rglob("*.spool"))  # nothing left behind


def test_a_killed_shipper_is_replaced_and_no_event_published_after_the_kill_is_lost(
        event_settings: KafkaSettings) -> None:
    log = ShippedEventLog(event_settings)
    log.start()
    for i in range(20):
        log.publish_feedback(feedback(i))
    assert log.flush(30)
    first = log.stats()["shipper_pid"]
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: not _alive(first))
    for i in range(20, 220):
        log.publish_feedback(feedback(i))
    assert log.flush(60)
    second = log.stats()["shipper_pid"]
    assert second not in (None, first)
    got = consume_until(event_settings, ["feedback"], 220)
    log.close()
    received = [e.data.request_id for e in got]
    assert set(received) == {request_id(i) for i in range(220)}
    assert len(received) == len(set(received))


def test_events_wait_and_spool_while_no_shipper_starts_then_all_arrive(event_settings: KafkaSettings) -> None:
    """A shipper that cannot start (here: a command that fails) holds nothing back for ever: past the queue,
    events are spooled in the serving process; once a shipper runs, it adopts that spool and replays it."""
    settings = event_settings.model_copy(update={"queue_size": 10, "reconnect_interval_s": 0.2})
    log = ShippedEventLog(settings, command=[sys.executable, "-c", "raise SystemExit(3)"])
    log.start()
    for i in range(100):
        log.publish_feedback(feedback(i))
    assert wait_for(lambda: log.stats()["fallback_spool_bytes"] > 0)
    assert log.stats()["shipper_pid"] is None
    log.command = ShippedEventLog(settings).command  # the shipper can start again
    got = consume_until(settings, ["feedback"], 100, timeout=90)
    assert sorted(e.data.request_id for e in got) == sorted(request_id(i) for i in range(100))
    assert log.stats()["fallback_spool_bytes"] == 0
    log.close()
    assert wait_for(lambda: not list(settings.spool_dir.rglob("*.spool")))


def test_close_with_the_broker_down_leaves_every_event_spooled(event_settings: KafkaSettings) -> None:
    unreachable = event_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    log = ShippedEventLog(unreachable)
    log.start()
    for i in range(40):
        log.publish_prediction(prediction(i))
    log.close(timeout=10)
    log.publish_prediction(prediction(40))  # after close: still not lost
    assert len(spooled_ids(unreachable.spool_dir)) == 41


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_setting_the_producer_cannot_take_fails_at_once_not_in_every_shipper(tmp_path: Path) -> None:
    bad = KafkaSettings(spool_dir=tmp_path / "spool", security_protocol="SASL_SSL")  # no sasl_mechanism
    with pytest.raises(EventLogError, match="sasl_mechanism"):
        ShippedEventLog(bad)


# A shipper whose first answer to a flush comes late and says "not flushed"; later ones come at once.
SLOW_FIRST_FLUSH = textwrap.dedent("""
    import sys, time
    from tuneloop.events import producer, shipper
    real_flush, answers = producer.EventLog.flush, []
    def flush(self, timeout=10.0):
        answers.append(1)
        if len(answers) == 1:
            time.sleep(3)
            return False
        return real_flush(self, timeout)
    producer.EventLog.flush = flush
    shipper.main()
""")


def test_a_late_answer_to_one_flush_is_not_taken_for_the_next_ones(event_settings: KafkaSettings) -> None:
    log = ShippedEventLog(event_settings, command=[sys.executable, "-c", SLOW_FIRST_FLUSH])
    log.start()
    log.publish_feedback(feedback(1))
    assert wait_for(lambda: log.stats()["unshipped"] == 0)  # so that the first flush asks the shipper at once
    assert not log.flush(timeout=0.2)  # gives up before the shipper answers "not flushed"
    assert log.flush(timeout=30)  # its own answer, not the first one's late "not flushed"
    log.close()
