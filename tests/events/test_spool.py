"""The spool on its own: framing, torn writes, the size cap, restarts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.events.factories import feedback, request_id
from tuneloop.events.broker import free_port
from tuneloop.events.envelope import unwrap, wrap
from tuneloop.events.metrics import DROPPED
from tuneloop.events.producer import EventLog
from tuneloop.events.spool import Spool
from tuneloop.settings import KafkaSettings


def test_events_come_back_in_order_across_segments_and_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="always", segment_bytes=2048)
    for i in range(30):
        assert spool.append(wrap(feedback(i), "test"))
    spool.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20)  # a new process on the same folder
    assert reopened.bytes == spool.bytes > 0
    segments = reopened.sealed_segments()
    assert len(segments) > 1
    ids = [unwrap(e.value).data.request_id for s in segments for e in reopened.read_segment(s)]
    assert ids == [request_id(i) for i in range(30)]
    reopened.append(wrap(feedback(30), "test"))  # new events go after the old ones, in a new segment
    assert reopened.sealed_segments() == segments
    for segment in segments:
        reopened.remove(segment)
    reopened.seal()
    assert [unwrap(e.value).data.request_id for e in reopened.read_segment(reopened.sealed_segments()[0])] == \
        [request_id(30)]


def test_torn_record_at_the_end_of_a_segment_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(5):
        spool.append(wrap(feedback(i), "test"))
    spool.seal()
    segment = spool.sealed_segments()[0]
    segment.write_bytes(segment.read_bytes()[:-7])  # a crash in the middle of the last write
    assert [unwrap(e.value).data.request_id for e in spool.read_segment(segment)] == \
        [request_id(i) for i in range(4)]


def test_corrupt_record_stops_the_read_instead_of_replaying_garbage(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append(wrap(feedback(i), "test"))
    spool.seal()
    segment = spool.sealed_segments()[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit inside the second record
    segment.write_bytes(bytes(data))
    assert [unwrap(e.value).data.request_id for e in spool.read_segment(segment)] == [request_id(0)]


def test_spool_cap_drops_loudly_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", spool_dir=tmp_path / "spool",
                             spool_max_bytes=5000, feedback_topic="cap-test-feedback")
    before = DROPPED.labels("cap-test-feedback")._value.get()
    log = EventLog(settings)
    log.start()
    with caplog.at_level(logging.ERROR):
        for i in range(100):
            log.publish_feedback(feedback(i))
        assert log.flush(30)
    stats = log.stats()
    dropped = DROPPED.labels("cap-test-feedback")._value.get() - before
    assert dropped == stats["dropped"] > 0
    assert stats["spool_bytes"] <= 5000
    assert stats["spooled"] + stats["dropped"] == 100  # every event is either on disk or counted as lost
    assert [r.levelno for r in caplog.records if "EVENT SPOOL FULL" in r.getMessage()] == [logging.ERROR]  # once
    log.close()


def test_below_the_cap_nothing_is_dropped(tmp_path: Path) -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", spool_dir=tmp_path / "spool",
                             feedback_topic="no-cap-feedback")
    log = EventLog(settings)
    log.start()
    for i in range(100):
        log.publish_feedback(feedback(i))
    assert log.flush(30)
    assert DROPPED.labels("no-cap-feedback")._value.get() == 0
    assert log.stats()["spooled"] == 100
    log.close()
