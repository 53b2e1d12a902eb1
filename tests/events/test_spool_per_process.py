"""One spool folder per process: never two replayers on one folder, and a dead process's folder adopted.

Two EventLogs in one test process stand for two processes: their folder locks are flocks, which exclude
each other per open file, within a process as between processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.events.conftest import every_message, spool_segments
from tests.events.factories import feedback, request_id
from tests.fixtures.broker import isolated_settings
from tests.waiting import wait_for
from tuneloop.events.broker import TansuBroker, free_port
from tuneloop.events.envelope import wrap
from tuneloop.events.producer import EventLog
from tuneloop.events.spool import FolderLock, Spool, claim_folder, orphaned_folders
from tuneloop.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]


def test_a_held_folder_is_never_offered_and_a_released_one_is_offered_once(tmp_path: Path) -> None:
    first, second = claim_folder(tmp_path), claim_folder(tmp_path)
    assert first.folder != second.folder and first.folder.parent == tmp_path
    assert list(orphaned_folders(tmp_path, exclude=second.folder)) == []  # its owner lives
    first.release()  # as when its process dies
    [adopted] = orphaned_folders(tmp_path, exclude=second.folder)
    assert adopted.folder == first.folder
    assert list(orphaned_folders(tmp_path, exclude=second.folder)) == []  # one adopter at a time
    adopted.remove_folder()
    assert not first.folder.exists() and second.folder.exists()


def test_a_lock_taken_after_its_folder_was_removed_guards_nothing(tmp_path: Path) -> None:
    owner = claim_folder(tmp_path)
    owner.release()
    [adopter] = orphaned_folders(tmp_path, exclude=tmp_path / "none")
    adopter.remove_folder()
    assert FolderLock.try_take(owner.folder) is None  # not recreated, and not reported as ours


def test_segments_of_the_single_folder_layout_are_replayed_after_an_upgrade(
        event_settings: KafkaSettings) -> None:
    old = Spool(event_settings.spool_dir, max_bytes=1 << 20)  # written before folders per process
    for i in range(5):
        old.append(wrap(feedback(i), "test"))
    old.close()
    log = EventLog(event_settings, reconnect_interval_s=0.2)
    assert log.stats()["spooling"]
    log.start()
    assert wait_for(lambda: log.stats()["replayed"] == 5)
    got = every_message(event_settings, "feedback")
    log.close()
    assert sorted(e.data.request_id for e in got) == [request_id(i) for i in range(5)]
    assert spool_segments(event_settings.spool_dir) == [] and event_settings.spool_dir.is_dir()


def test_two_processes_on_one_spool_root_deliver_every_event_once(own_broker: TansuBroker,
                                                                   tmp_path: Path) -> None:
    settings = isolated_settings(own_broker.bootstrap_servers, tmp_path / "spool")
    logs = [EventLog(settings, reconnect_interval_s=0.2) for _ in range(2)]
    for log in logs:
        log.start()
    for i in range(300):  # the broker is down: everything is spooled, by both
        logs[i % 2].publish_feedback(feedback(i))
    assert all(log.flush(30) for log in logs)
    assert [log.stats()["spooled"] for log in logs] == [150, 150]
    own_broker.start()
    assert wait_for(lambda: not spool_segments(settings.spool_dir))  # each goes once the broker has it all
    assert all(log.flush(30) for log in logs)
    got = every_message(settings, "feedback")
    stats = [log.stats() for log in logs]
    for log in logs:
        log.close()
    assert len(got) == len({e.event_id for e in got}) == 300  # none twice
    assert sorted(e.data.request_id for e in got) == sorted(request_id(i) for i in range(300))
    assert [(s["replayed"], s["spool_bytes"], s["spooling"]) for s in stats] == [(150, 0, False)] * 2


def test_a_live_process_leaves_another_live_ones_spool_alone(event_settings: KafkaSettings) -> None:
    offline = event_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    stuck = EventLog(offline, reconnect_interval_s=0.2)  # a worker that cannot reach the broker
    stuck.start()
    for i in range(40):
        stuck.publish_feedback(feedback(i))
    assert stuck.flush(30) and stuck.stats()["spooled"] == 40
    healthy = EventLog(event_settings, reconnect_interval_s=0.2)
    healthy.start()
    assert wait_for(lambda: healthy.stats()["connected"])
    time.sleep(1.5)  # several adoption scans
    assert healthy.stats()["replayed"] == 0 and stuck.stats()["spool_bytes"] > 0
    stuck.close(timeout=1)  # its folder is free now, as if its process had ended
    assert wait_for(lambda: healthy.stats()["replayed"] == 40)
    got = every_message(event_settings, "feedback")
    healthy.close()
    assert sorted(e.data.request_id for e in got) == sorted(request_id(i) for i in range(40))
    assert spool_segments(event_settings.spool_dir) == []


def test_a_live_process_adopts_the_spool_of_one_killed_beside_it(event_settings: KafkaSettings) -> None:
    survivor = EventLog(event_settings, reconnect_interval_s=0.2)
    survivor.start()
    assert wait_for(lambda: survivor.stats()["connected"])
    # A sibling that never reached the broker, killed with everything it published in its spool.
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
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert wait_for(lambda: survivor.stats()["replayed"] == 120)
    got = every_message(event_settings, "feedback")

    def folders() -> list[str]:
        return [p.name for p in event_settings.spool_dir.iterdir() if p.is_dir()]

    # The dead one's folder goes once replayed (just after the count is reached); the survivor's stays while
    # it runs and goes, empty, when it closes.
    assert wait_for(lambda: folders() == [survivor.spool.directory.name]), folders()
    survivor.close()
    assert len(got) == len({e.event_id for e in got}) == 120
    assert sorted(e.data.request_id for e in got) == sorted(request_id(i) for i in range(120))
    assert spool_segments(event_settings.spool_dir) == []
    assert folders() == []
