"""ShippedEventLog: the event log's Kafka work in a process of its own, beside the serving process.

    request thread ──put_nowait──▶ bounded queue ──forwarder thread (wrap; one message a batch)──▶ socket
      ──▶ shipper process (``python -m tuneloop.events.shipper``): an EventLog (sender, producer, spool, replay)

kafka-python spends ~250 µs of Python on every event (its partitioner, record builder, futures and network
thread; bench/RESULTS.md, "Event log"). In the serving process that is GIL time each request waits behind;
here the serving process pays for the CloudEvent (~20-30 µs) and a share of one socket write per batch, and
the shipper's Python runs under a GIL of its own. ``kafka.shipper: process`` chooses it; ``thread`` keeps
the EventLog in the serving process.

Nothing is lost that an in-process EventLog would not lose. The shipper's EventLog sends, or spools what the
broker does not take, as it does in process. A shipper that dies is started again, and a batch it could not
be given is given to the new one, which adopts the dead one's spool folder (tuneloop/events/spool.py). What a
shipper held only in memory when it died is lost with it (what it had read, and a batch written to its socket
that it had not read yet), as an in-process EventLog's memory is lost with its process. While no shipper runs,
events wait in the queue, and past it go to a spool folder of this process's own, which is let go once a
shipper runs and the queue has room again, so that the shipper adopts and replays it. Across such an outage
events may reach the broker out of their publishing order (the replayed folder beside new events), which the
consumers take as they do a replay (the adapter's joiner holds feedback that comes before its prediction; the
monitor's windows count events, not their order).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tuneloop.events.client_config import producer_config, topic_names
from tuneloop.events.envelope import Envelope, as_envelope, wrap
from tuneloop.events.errors import EventLogError
from tuneloop.events.metrics import OUTCOMES, SPOOL_BYTES
from tuneloop.events.producer import EventLog
from tuneloop.events.queueing import STOP, QueuedPublisher, seconds_left
from tuneloop.events.schemas import EventData
from tuneloop.events.spool import FolderLock, Spool, claim_folder
from tuneloop.settings import KafkaSettings
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)

# A shipper that does not say it is ready in this long (its imports, its spool folder) is given up on.
START_TIMEOUT_S = 30.0
# What a stopping shipper is given at least to spool what it holds (up to a queue's worth), whatever is left of
# close()'s own timeout: killing it sooner would lose events an in-process EventLog would have spooled.
STOP_GRACE_S = 10.0


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
                                            start_new_session=True, env=_importing_this_package())
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
            try:  # its socket closed: it is ending, or has ended
                code: int | None = self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            self.kill()
            raise ShipperError(f"the event shipper ended at start (exit code {code}); its log says why") from exc
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
            self.process.wait(timeout=timeout + STOP_GRACE_S)
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
        producer_config(settings)  # a bad TLS/SASL/codec setting fails here, loudly, not in every shipper
        self.settings = settings
        self.source = source
        self.command = command or [sys.executable, "-m", "tuneloop.events.shipper"]
        self.topics = topic_names(settings)
        self._shipper: _Shipper | None = None
        self._shipper_lock = threading.Lock()  # starting, replacing and writing to the shipper
        self._flush_lock = threading.Lock()  # one flush() at a time reads the shipper's answers
        self._flushes = 0  # numbers each flush's question, so that a late answer is not taken for another's
        self._held: _Held | None = None  # a batch taken from the queue that no shipper has taken yet
        self._held_lock = threading.Lock()
        self._fallback: tuple[FolderLock, Spool] | None = None  # while no shipper takes events
        self._fallback_lock = threading.Lock()
        self._started = False
        self.unencodable = 0
        self._forwarder_done = threading.Event()
        # A shipper that cannot start (its log says why) is tried again at most every 30 s, not in a loop.
        self._forwarder = SupervisedLoop("tuneloop-event-forwarder", self._forward_step,
                                         stop=self._forwarder_done, initial_backoff_s=0.5, max_backoff_s=30.0)

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
        """Wait until every published event is acknowledged by the broker or spooled; True if in time. False
        also when the shipper that took them has died since (what it held is lost, module docstring)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._queue.unfinished_tasks or not self._flush_lock.acquire(timeout=seconds_left(deadline)):
            return False
        try:
            if not self._shipper_lock.acquire(timeout=seconds_left(deadline)):
                return False
            try:
                shipper = self._shipper
                if shipper is None or not shipper.alive:
                    return shipper is None and self._fallback is None  # None: nothing was ever shipped
                self._flushes += 1
                question = self._flushes
                shipper.conn.send(("flush", (question, seconds_left(deadline))))
            except OSError:
                return False
            finally:
                self._shipper_lock.release()
            # Answers come in order; one to an earlier flush that gave up waiting is read and passed over.
            while shipper.conn.poll(seconds_left(deadline) + 1.0):
                kind, (answered, ok) = shipper.conn.recv()
                if answered == question:
                    return bool(ok)
            return False
        except (OSError, EOFError):  # the shipper died, or was replaced, while we waited
            return False
        finally:
            self._flush_lock.release()

    def close(self, timeout: float = 10.0) -> None:
        """Hand everything queued to the shipper and stop it (it delivers or spools what it holds); whatever
        no shipper took is spooled here, for a later process to replay. Nothing published is lost."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        if self._started:
            try:
                self._queue.put(STOP, timeout=seconds_left(deadline))
            except queue.Full:
                pass  # the forwarder is stuck without a shipper: what it did not take is spooled below
            self._forwarder.join(timeout=seconds_left(deadline) / 2)
            self._forwarder_done.set()
        if not self._shipper_lock.acquire(timeout=seconds_left(deadline)):
            # The forwarder is stuck writing to a shipper that stopped reading (a stalled disk under its
            # spool, say), or waiting for one to start: end that shipper, and the forwarder's write fails.
            shipper = self._shipper
            if shipper is not None:
                log.warning("the event shipper (pid %d) does not answer; killing it", shipper.process.pid)
                shipper.process.kill()
            self._shipper_lock.acquire()
        try:
            if self._shipper is not None:
                if not self._shipper.stop(seconds_left(deadline)):
                    log.warning("the event shipper did not end cleanly; its spool is left for a replayer")
                self._shipper = None
        finally:
            self._shipper_lock.release()
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
        fallback = self._fallback
        return {"queued": self._queue.qsize(), "unshipped": self._queue.unfinished_tasks,  # queued or held
                "shipper_pid": self.shipper_pid,
                "fallback_spool_bytes": fallback[1].bytes if fallback else 0, "unencodable": self.unencodable}

    # ------------------------------------------------------------------ forwarding
    def _forward_step(self) -> float:
        """One batch to the shipper. A batch no shipper takes is held and offered again after the loop's
        backoff; meanwhile new events queue up behind it, in order."""
        with self._shipper_lock:
            # At start and after a death, events or not: a shipper also replays what is spooled, its own
            # folder and those of processes that died (a service restarted after a crash, say).
            self._ensure_shipper()
        if self._fallback is not None and self._queue.qsize() < self._queue.maxsize // 2:
            # A shipper runs and the overload is over: it adopts what was spooled here meanwhile. Not at every
            # batch while the queue stays full, or it would replay a folder of a few events each time.
            self._let_go_of_fallback()
        held = self._held
        if held is None:
            # A second at most: the shipper's health is looked at between waits.
            batch = self._next_batch(self._forwarder_done, wait_s=1.0)
            if not batch:
                return 0.0
            with self._held_lock:  # close() spools a held batch the forwarder could not ship in time
                held = self._held = _Held(self._wrap_each(batch), len(batch), stop=any(i is STOP for i in batch))
        if held.envelopes:
            self._ship(held.envelopes)
        with self._held_lock:
            self._held = None
        for _ in range(held.taken):
            self._queue.task_done()
        if held.stop:
            self._forwarder_done.set()  # the events queued before the stop are shipped
        return 0.0

    def _wrap_each(self, batch: list[Any]) -> list[Envelope]:
        """The batch's events as CloudEvents; one that cannot be written is logged and left out, alone."""
        envelopes = []
        for item in batch:
            if item is STOP:
                continue
            try:
                envelopes.append(wrap(item, self.source))
            except Exception:
                log.exception("event log: could not write a %s as a CloudEvent", type(item).__name__)
                self.unencodable += 1
        return envelopes

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

    # ------------------------------------------------------------------ while no shipper takes events
    def _to_fallback(self, items: list[Any]) -> None:
        if not items:
            return
        with self._fallback_lock:
            for item in items:
                try:
                    envelope = as_envelope(item, self.source)
                    topic = self.topics[envelope.kind]
                except Exception:
                    log.exception("event log: could not write a %s as a CloudEvent", type(item).__name__)
                    self.unencodable += 1
                    continue
                try:
                    if self._fallback is None:
                        lock = claim_folder(self.settings.spool_dir)
                        self._fallback = lock, Spool.from_settings(lock.folder, self.settings)
                        log.warning("no event shipper takes events; spooling them to %s", lock.folder)
                    spooled = self._fallback[1].append(envelope)
                except Exception:
                    log.exception("event log: could not spool a %s", type(item).__name__)
                    spooled = False
                OUTCOMES["spooled" if spooled else "dropped"](topic).inc()
            # livesum across processes: this process's share, beside the shipper's own spool
            SPOOL_BYTES.set(self._fallback[1].bytes if self._fallback else 0)

    def _let_go_of_fallback(self) -> None:
        """Release this process's own spool folder: a shipper's replayer adopts it, as a dead process's."""
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
            SPOOL_BYTES.set(0)


def _importing_this_package() -> dict[str, str]:
    """This process's environment, with the folder that holds this ``tuneloop`` package first on the path: the
    shipper runs the same code as its worker whatever its working directory (a Bento's, an installed wheel's)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}


def _as_tuple(envelope: Envelope) -> tuple[str, bytes, bytes, str]:
    return envelope.kind, envelope.key, envelope.value, envelope.event_id


def serve(conn: Connection) -> int:
    """The shipper process: an EventLog fed by the serving process over ``conn``. However it ends (told to
    stop, its serving process gone, SIGTERM, a message it cannot read), what it holds is delivered or spooled."""
    settings, source = conn.recv()
    events = EventLog(settings, source=source)
    events.start()
    timeout = 10.0
    try:
        conn.send("ready")
        while True:
            try:
                kind, body = conn.recv()
            except (EOFError, OSError):  # the serving process is gone
                break
            if kind == "events":
                for item in body:
                    events.publish_envelope(Envelope(*item))
            elif kind == "flush":
                question, wait_s = body
                conn.send(("flushed", (question, events.flush(wait_s))))
            elif kind == "stop":
                timeout = body
                break
    except OSError as exc:  # an answer to a serving process that has gone
        log.info("the serving process went away: %s", exc)
    except Exception:
        log.exception("the event shipper cannot go on; delivering or spooling what it holds")
        return 1
    finally:
        events.close(timeout=timeout)
    return 0


def _end_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # out of conn.recv(), through serve()'s finally: what is held is spooled


def main() -> None:
    signal.signal(signal.SIGTERM, _end_on_sigterm)
    logging.basicConfig(level=os.environ.get("TUNELOOP_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s tuneloop-shipper[%(process)d] %(name)s: %(message)s")
    sys.exit(serve(Connection(int(sys.argv[1]))))


if __name__ == "__main__":
    main()
