"""ShippedEventLog: the event log's Kafka work in a process of its own, beside the serving process.

    request thread ──put_nowait──▶ bounded queue ──forwarder thread (wrap; one message a batch)──▶ socket
      ──▶ shipper process (``python -m tuneloop.events.shipper``): an EventLog (sender, producer, spool, replay)

kafka-python spends ~250 µs of Python on every event (its partitioner, record builder, futures and network
thread; bench/RESULTS.md, "Event log"). In the serving process that is GIL time each request waits behind;
here the serving process pays for the CloudEvent (~20-30 µs) and a share of one socket write per batch, and
the shipper's Python runs under a GIL of its own. ``kafka.shipper: process`` chooses it; ``thread`` keeps
the EventLog in the serving process.

Nothing is lost that an in-process EventLog would not lose. The shipper's EventLog sends, or spools what the
broker does not take, as it does in process. A shipper that dies is started again and given the batch the
dead one did not take; the new one adopts the dead one's spool folder (tuneloop/events/spool.py). What a
shipper held only in memory when it died is lost with it, as an in-process EventLog's is with its process.
While no shipper can be started, events wait in the queue, and past it go to a spool folder of this
process's own, which is let go once a shipper runs again, so that it adopts and replays it. Across such an
outage events may reach the broker out of their publishing order (the replayed folder beside new events),
which the consumers take as they do a replay (the adapter's joiner holds feedback that comes before its
prediction; the monitor's windows count events, not their order).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from tuneloop.events.client_config import topic_names
from tuneloop.events.envelope import Envelope, wrap
from tuneloop.events.errors import EventLogError
from tuneloop.events.metrics import OUTCOMES
from tuneloop.events.producer import EventLog
from tuneloop.events.queueing import STOP, QueuedPublisher
from tuneloop.events.schemas import EventData
from tuneloop.events.spool import FolderLock, Spool, claim_folder
from tuneloop.settings import KafkaSettings
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)

# A shipper that does not say it is ready in this long (its imports, its spool folder) is given up on.
START_TIMEOUT_S = 30.0


class ShipperError(EventLogError):
    """No shipper process took a batch (it could not start, or it died): the forwarder tries again."""


@dataclass
class _Held:
    """A batch taken from the queue: its events wrapped once, however often they are offered."""

    envelopes: list[Envelope]
    taken: int  # queue items, the stop marker included
    stop: bool


class _Shipper:
    """One shipper process and the socket to it."""

    def __init__(self, settings: KafkaSettings, source: str, command: list[str]) -> None:
        ours, theirs = socket.socketpair()
        try:
            # A session of its own: a Ctrl-C meant for the service must not end it before the service has
            # told it to deliver what it holds. It ends itself when the serving process goes (its socket closes).
            self.process = subprocess.Popen([*command, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                            start_new_session=True)
        except OSError as exc:
            ours.close()
            raise ShipperError(f"could not start the event shipper: {exc}") from exc
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        try:
            self.conn.send((settings, source))
            if not self.conn.poll(START_TIMEOUT_S) or self.conn.recv() != "ready":
                raise ShipperError(f"the event shipper did not start within {START_TIMEOUT_S:.0f} s")
        except (OSError, EOFError) as exc:
            self.kill()
            raise ShipperError(f"the event shipper ended at start (exit code {self.process.poll()})") from exc
        except ShipperError:
            self.kill()
            raise

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.conn.close()
        if self.alive:
            self.process.kill()
        self.process.wait()

    def stop(self, timeout: float) -> bool:
        """Ask it to deliver or spool what it holds and end; False if it had to be killed."""
        try:
            self.conn.send(("stop", timeout))
            self.process.wait(timeout=timeout + 2)
            return self.process.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
        finally:
            self.kill()


class ShippedEventLog(QueuedPublisher):
    """The EventLog's request side in this process, its Kafka work in a shipper process (module docstring)."""

    def __init__(self, settings: KafkaSettings, source: str = "tuneloop-service",
                 command: list[str] | None = None) -> None:
        super().__init__(settings)
        self.settings = settings
        self.source = source
        self.command = command or [sys.executable, "-m", "tuneloop.events.shipper"]
        self.topics = topic_names(settings)
        self._shipper: _Shipper | None = None
        self._shipper_lock = threading.Lock()  # the forwarder's batches and flush()'s questions share a socket
        self._held: _Held | None = None  # a batch taken from the queue that no shipper has taken yet
        self._held_lock = threading.Lock()
        self._fallback: tuple[FolderLock, Spool] | None = None  # while no shipper takes events
        self._fallback_lock = threading.Lock()
        self._started = False
        self._forwarder_done = threading.Event()
        self._forwarder = SupervisedLoop("tuneloop-event-forwarder", self._forward_step,
                                         stop=self._forwarder_done, initial_backoff_s=0.5, max_backoff_s=5.0)

    # ------------------------------------------------------------------ the request side
    def _overflow(self, data: EventData | Envelope) -> None:
        self._to_fallback([data])

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the forwarder; it starts the shipper, so this returns at once."""
        self._started = True
        self._forwarder.start()

    @property
    def shipper_pid(self) -> int | None:
        shipper = self._shipper
        return shipper.process.pid if shipper is not None and shipper.alive else None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every published event is acknowledged by the broker or spooled; True if in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._queue.unfinished_tasks:
            return False
        with self._shipper_lock:
            shipper = self._shipper
            if shipper is None or not shipper.alive:
                return self._fallback is None  # nothing was taken by a shipper that is gone now
            left = max(0.1, deadline - time.monotonic())
            try:
                shipper.conn.send(("flush", left))
                return shipper.conn.poll(left + 1) and shipper.conn.recv() == ("flushed", True)
            except (OSError, EOFError):
                return False

    def close(self, timeout: float = 10.0) -> None:
        """Hand everything queued to the shipper and stop it (it delivers or spools what it holds); whatever
        no shipper took is spooled here, for a later process to replay. Nothing published is lost."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        if self._started:
            try:
                self._queue.put(STOP, timeout=max(0.1, deadline - time.monotonic()))
            except queue.Full:
                pass  # the forwarder is stuck without a shipper: what it did not take is spooled below
            self._forwarder.join(timeout=max(0.1, deadline - time.monotonic()) / 2)
            self._forwarder_done.set()
        with self._shipper_lock:
            if self._shipper is not None:
                if not self._shipper.stop(max(0.1, deadline - time.monotonic())):
                    log.warning("the event shipper did not end cleanly; its spool is left for a replayer")
                self._shipper = None
        with self._held_lock:
            left: list[Any] = list(self._held.envelopes) if self._held is not None else []
            self._held = None
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._to_fallback([item for item in left if item is not STOP])
        self._let_go_of_fallback()

    def stats(self) -> dict[str, Any]:
        return {"queued": self._queue.qsize(), "shipper_pid": self.shipper_pid,
                "fallback_spool_bytes": self._fallback[1].bytes if self._fallback else 0}

    # ------------------------------------------------------------------ forwarding
    def _forward_step(self) -> float:
        """One batch to the shipper. A batch no shipper takes is held and offered again after the loop's
        backoff; meanwhile new events queue up behind it, in order."""
        with self._shipper_lock:
            # At start and after a death, events or not: a shipper also replays what is spooled, its own
            # folder and those of processes that died (a service restarted after a crash, say).
            self._ensure_shipper()
        held = self._held
        if held is None:
            # A second at most: the shipper's health is looked at between waits.
            batch = self._next_batch(self._forwarder_done, wait_s=1.0)
            if not batch:
                return 0.0
            with self._held_lock:  # close() spools a held batch the forwarder could not ship in time
                held = self._held = _Held([wrap(item, self.source) for item in batch if item is not STOP],
                                          len(batch), stop=any(item is STOP for item in batch))
        if held.envelopes:
            self._ship(held.envelopes)
        with self._held_lock:
            self._held = None
        for _ in range(held.taken):
            self._queue.task_done()
        if held.stop:
            self._forwarder_done.set()  # the events queued before the stop are shipped
        return 0.0

    def _ensure_shipper(self) -> _Shipper:
        """The running shipper, started first if there is none or it died; the caller holds _shipper_lock."""
        if self._shipper is not None and self._shipper.alive:
            return self._shipper
        if self._closed and self._forwarder_done.is_set():  # close() gave up on the forwarder: start none
            raise ShipperError("the event log is closed")
        if self._shipper is not None:
            log.warning("the event shipper (pid %d) ended with exit code %s; starting another",
                        self._shipper.process.pid, self._shipper.process.poll())
            self._shipper.kill()
            self._shipper = None
        self._shipper = _Shipper(self.settings, self.source, self.command)
        log.info("event shipper started (pid %d)", self._shipper.process.pid)
        return self._shipper

    def _ship(self, envelopes: list[Envelope]) -> None:
        with self._shipper_lock:
            shipper = self._ensure_shipper()
            try:
                shipper.conn.send(("events", [_as_tuple(envelope) for envelope in envelopes]))
            except OSError as exc:
                shipper.kill()
                self._shipper = None
                raise ShipperError(f"the event shipper did not take a batch: {exc}") from exc
        self._let_go_of_fallback()  # a shipper runs: it adopts what was spooled here meanwhile

    # ------------------------------------------------------------------ while no shipper runs
    def _to_fallback(self, items: list[Any]) -> None:
        if not items:
            return
        with self._fallback_lock:
            for item in items:
                envelope = item if isinstance(item, Envelope) else wrap(item, self.source)
                topic = self.topics[envelope.kind]
                try:
                    if self._fallback is None:
                        lock = claim_folder(self.settings.spool_dir)
                        self._fallback = lock, Spool(lock.folder, self.settings.spool_max_bytes,
                                                     self.settings.spool_fsync)
                        log.warning("no event shipper takes events; spooling them to %s", lock.folder)
                    spooled = self._fallback[1].append(envelope)
                except Exception:
                    log.exception("event log: could not spool a %s", type(item).__name__)
                    spooled = False
                OUTCOMES["spooled" if spooled else "dropped"](topic).inc()

    def _let_go_of_fallback(self) -> None:
        """Release this process's own spool folder: a shipper's replayer adopts it, as a dead process's."""
        if self._fallback is None:
            return
        with self._fallback_lock:
            if self._fallback is None:
                return
            lock, spool = self._fallback
            self._fallback = None
            spool.close()
            if spool.is_empty():
                lock.remove_folder()
            else:
                lock.release()


def _as_tuple(envelope: Envelope) -> tuple[str, bytes, bytes, str]:
    return envelope.kind, envelope.key, envelope.value, envelope.event_id


def serve(conn: Connection) -> int:
    """The shipper process: an EventLog fed by the serving process over ``conn``."""
    settings, source = conn.recv()
    events = EventLog(settings, source=source)
    events.start()
    conn.send("ready")
    timeout = 10.0
    while True:
        try:
            kind, body = conn.recv()
        except (EOFError, OSError):  # the serving process is gone: deliver or spool what is held, then end
            break
        if kind == "events":
            for item in body:
                events.publish_envelope(Envelope(*item))
        elif kind == "flush":
            conn.send(("flushed", events.flush(body)))
        elif kind == "stop":
            timeout = body
            break
    events.close(timeout=timeout)
    return 0


def main() -> None:
    logging.basicConfig(level=os.environ.get("TUNELOOP_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s tuneloop-shipper[%(process)d] %(name)s: %(message)s")
    sys.exit(serve(Connection(int(sys.argv[1]))))


if __name__ == "__main__":
    main()
