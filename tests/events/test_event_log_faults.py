"""Faults under the event log's threads: a full disk, a segment deleted under the replayer, a raising step.

The disk faults are injected in this process (a real disk cannot be filled for a test): ``os.write`` and
``os.fsync`` fail with ENOSPC for spool segment files only, everything else passes through.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from tests.events.conftest import every_message, spool_segments
from tests.events.factories import feedback, request_id
from tests.fixtures.broker import isolated_settings
from tests.waiting import wait_for
from tuneloop.events.broker import TansuBroker, free_port
from tuneloop.events.envelope import unwrap, wrap
from tuneloop.events.metrics import DROPPED
from tuneloop.events.producer import EventLog
from tuneloop.events.spool import Spool
from tuneloop.settings import KafkaSettings
from tuneloop.supervision import BACKGROUND_ERRORS


def is_segment(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".spool")
    except OSError:
        return False


class FullDisk:
    """While ``full``, ``error`` (ENOSPC: a full disk; EIO: a failing one) from fsync on spool segments (and,
    with ``torn_writes``, half of each write, then the error)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, torn_writes: bool = False, error: int = errno.ENOSPC) -> None:
        self.full = False
        real_fsync, real_write = os.fsync, os.write

        def fsync(fd: int) -> None:
            if self.full and is_segment(fd):
                raise OSError(error, os.strerror(error))
            real_fsync(fd)

        def write(fd: int, data) -> int:
            if self.full and torn_writes and is_segment(fd):
                if len(data) > 1:
                    return real_write(fd, bytes(data)[: len(data) // 2])  # what fitted; the rest raises
                raise OSError(error, os.strerror(error))
            return real_write(fd, data)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "write", write)


def dropped(topic: str) -> float:
    return DROPPED.labels(topic)._value.get()


def background_errors(thread: str) -> float:
    return BACKGROUND_ERRORS.labels(thread)._value.get()


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_a_disk_that_refuses_writes_drops_events_counts_them_and_logs_once_per_episode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: int) -> None:
    settings = isolated_settings(f"127.0.0.1:{free_port()}", tmp_path / "spool", spool_fsync="always")
    topic = settings.feedback_topic
    disk = FullDisk(monkeypatch, error=error)
    log = EventLog(settings)  # no broker: every event goes to the spool
    log.start()
    with caplog.at_level(logging.INFO, logger="tuneloop"):
        disk.full = True
        for i in range(20):
            log.publish_feedback(feedback(i))
        assert log.flush(30)
        disk.full = False  # space freed
        for i in range(20, 25):
            log.publish_feedback(feedback(i))
        assert log.flush(30)
        disk.full = True  # and full again: a second episode
        for i in range(25, 30):
            log.publish_feedback(feedback(i))
        assert log.flush(30)
    stats = log.stats()
    log.close()
    assert (stats["dropped"], stats["spooled"], stats["unencodable"]) == (25, 5, 0)
    assert dropped(topic) == 25
    episodes = [r for r in caplog.records if "EVENT SPOOL DISK ERROR" in r.getMessage()]
    assert [r.levelno for r in episodes] == [logging.ERROR, logging.ERROR]  # one line per episode
    assert not [r for r in caplog.records if r.exc_info]  # and no traceback per event
    # What is on disk is exactly the events that were counted as spooled: the failed ones were cut off.
    [folder] = {p.parent for p in spool_segments(settings.spool_dir)}
    reader = Spool(folder, max_bytes=1 << 30)
    on_disk = [unwrap(e.value).data.request_id
               for segment in reader.sealed_segments() for e in reader.read_segment(segment)]
    assert on_disk == [request_id(i) for i in range(20, 25)]


def test_a_torn_write_is_cut_off_so_the_events_after_it_still_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FullDisk(monkeypatch, torn_writes=True)
    spool = Spool(tmp_path, max_bytes=1 << 20, fsync="never")
    assert spool.append(wrap(feedback(0), "test"))
    disk.full = True
    assert not spool.append(wrap(feedback(1), "test"))  # half of it reached the file
    disk.full = False
    assert spool.append(wrap(feedback(2), "test"))
    spool.close()
    [segment] = spool.sealed_segments()
    read_back = [unwrap(e.value).data.request_id for e in spool.read_segment(segment)]
    assert read_back == [request_id(0), request_id(2)]
    assert spool.bytes == segment.stat().st_size


def test_a_segment_deleted_under_the_replayer_does_not_stop_replay(own_broker: TansuBroker, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings = isolated_settings(own_broker.bootstrap_servers, tmp_path / "spool", spool_segment_bytes=4096)
    log = EventLog(settings, reconnect_interval_s=0.2)
    log.start()
    for i in range(100):
        log.publish_feedback(feedback(i))
    assert log.flush(30) and log.stats()["spooled"] == 100
    log.spool.seal()
    segments = log.spool.sealed_segments()
    assert len(segments) > 2
    lost = {unwrap(e.value).data.request_id for e in log.spool.read_segment(segments[0])}
    read_segment = log.spool.read_segment

    def deleted_first(path: Path):
        if path == segments[0]:
            path.unlink()  # between the replayer's listing and its read
        return read_segment(path)

    monkeypatch.setattr(log.spool, "read_segment", deleted_first)
    own_broker.start()
    assert wait_for(lambda: log.stats()["spool_bytes"] == 0 and not log.stats()["spooling"])
    log.publish_feedback(feedback(100))  # and then straight to the broker, not into a spool that never drains
    assert log.flush(30)
    got = every_message(settings, "feedback")
    stats = log.stats()
    log.close()
    assert sorted(e.data.request_id for e in got) == sorted({request_id(i) for i in range(101)} - lost)
    assert (stats["replayed"], stats["produced"]) == (100 - len(lost), 1)
    assert spool_segments(settings.spool_dir) == []


def test_a_replayer_step_that_raises_is_counted_and_retried(event_settings: KafkaSettings,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    offline = event_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    before = EventLog(offline)  # leaves spooled events behind for the next one
    for i in range(10):
        before.publish_feedback(feedback(i))
    before.close(timeout=1)
    log = EventLog(event_settings, reconnect_interval_s=0.2)
    errors = background_errors("tuneloop-event-replayer")
    calls = []
    real_connect = log._connect

    def failing_once() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "injected")
        return real_connect()

    monkeypatch.setattr(log, "_connect", failing_once)
    log.start()
    assert wait_for(lambda: log.stats()["replayed"] == 10)
    log.close()
    assert background_errors("tuneloop-event-replayer") == errors + 1
    assert len(calls) >= 2


def test_a_sender_step_that_raises_is_counted_and_retried(event_settings: KafkaSettings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventLog(event_settings, reconnect_interval_s=0.2)
    errors = background_errors("tuneloop-event-sender")
    real_next_batch = log._next_batch
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real_next_batch(*args, **kwargs)

    monkeypatch.setattr(log, "_next_batch", failing_once)
    log.start()
    for i in range(10):
        log.publish_feedback(feedback(i))
    assert log.flush(30)
    stats = log.stats()
    log.close()
    assert stats["produced"] + stats["spooled"] == 10
    assert background_errors("tuneloop-event-sender") == errors + 1
