"""EventLog: publish events to Kafka without ever making a request wait, and without losing one.

    request thread ──put_nowait──▶ bounded queue ──sender thread──▶ KafkaProducer (acks=all)
          │ (queue full)                 │ (broker down / send failed)
          └────────────────────────────▶ spool (segment files) ──replayer thread──▶ Kafka, in order

start() never waits for the broker: until the replayer first reaches it, and during every outage,
events go to the spool. While the spool holds events, new events join it rather than overtake them; once the replayer has
drained it, events flow straight to the broker again. Delivery is at-least-once: a crash between a
send and the deletion of its segment replays events the broker already has, and consumers drop
duplicates by the CloudEvent id.

Each EventLog spools to a folder of its own under ``spool_dir`` (tuneloop/events/spool.py): with several
workers, each replays only its own events. The replayer also adopts the folders of processes that died
(at start, and then every ``reconnect_interval_s``) and replays them too. Sender and replayer are
``SupervisedLoop``s: a step that raises is logged, counted and retried, never the end of the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop.events.client_config import ensure_topics, producer_config, topic_names
from tuneloop.events.envelope import Envelope, as_envelope
from tuneloop.events.metrics import OUTCOMES, SPOOL_BYTES
from tuneloop.events.queueing import STOP, QueuedPublisher, seconds_left
from tuneloop.events.schemas import EventData
from tuneloop.events.spool import FolderLock, Spool, claim_folder, orphaned_folders
from tuneloop.settings import KafkaSettings
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)



class EventLog(QueuedPublisher):
    """Publishes events from any thread without blocking it; see the module docstring for the paths."""

    def __init__(self, settings: KafkaSettings, source: str = "tuneloop-service",
                 reconnect_interval_s: float | None = None) -> None:
        super().__init__(settings)
        self.settings = settings
        self.source = source
        self.topics = topic_names(settings)
        self._producer_config = producer_config(settings)  # a bad TLS/SASL/codec setting fails here, loudly
        self.reconnect_interval_s = reconnect_interval_s or settings.reconnect_interval_s
        self._spool_root = Path(settings.spool_dir)
        self._own_folder = claim_folder(self._spool_root)
        self.spool = Spool.from_settings(self._own_folder.folder, settings)
        # Folders of processes that died, held (locked) by us until every event in them is delivered.
        self._adopted: list[tuple[FolderLock, Spool]] = []
        self._next_adoption = 0.0
        self._producer = None
        self._route_lock = threading.Lock()  # "spool or send" and "spool drained" decide under it
        self._stop = threading.Event()
        self._tried_once = threading.Event()  # the first attempt to reach the broker is over, either way
        try:
            self._adopt_orphans()
        except OSError as exc:  # a sibling folder we may not read: the replayer looks again, supervised
            log.warning("could not look for orphaned spool folders in %s: %s", self._spool_root, exc)
        # A previous process left events behind: ours wait behind them, as they did in its own spool.
        self._spooling = bool(self._adopted)
        # The sender's own stop: it finishes the queue after close() has stopped the rest.
        self._sender_done = threading.Event()
        self._sender = SupervisedLoop("tuneloop-event-sender", self._send_step, stop=self._sender_done)
        self._replayer = SupervisedLoop("tuneloop-event-replayer", self._replay_step, stop=self._stop)
        self._started = False
        self._unacked = 0
        self._unacked_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        for topic in self.topics.values():  # every series shows from the start, at 0
            for series in OUTCOMES.values():
                series(topic)
        SPOOL_BYTES.set(self._spool_bytes())

    # ------------------------------------------------------------------ the request side
    def publish_envelope(self, envelope: Envelope) -> None:
        """An event already wrapped (by a ShippedEventLog in the serving process, tuneloop/events/shipper.py)."""
        self._publish(envelope)

    def _overflow(self, data: EventData | Envelope) -> None:
        self._to_spool_safely(data)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the sender and the replayer; returns at once, the broker is reached in the background."""
        self._started = True
        self._sender.start()
        self._replayer.start()

    def wait_connected(self, timeout: float) -> bool:
        """Wait for the first attempt to reach the broker (at most ``timeout``); whether it succeeded. A
        short-lived process (the CLI publishing a transition) waits here, so that its events go to the broker
        rather than to a spool that only a later process would replay; a broker that refuses the connection
        answers at once, so nobody waits long for a broker that is not there."""
        self._tried_once.wait(timeout)
        return self._producer is not None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every published event is acknowledged or spooled; True if that happened in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                producer = self._producer
                if producer is not None:
                    try:
                        producer.flush(timeout=seconds_left(deadline))
                    except Exception as exc:  # a timeout, or a producer closed by a reconnect: look again
                        log.debug("flush: %s", exc)
                with self._unacked_lock:
                    if self._unacked == 0:
                        self.spool.sync()
                        return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Deliver or spool everything still queued, then stop; nothing published is lost."""
        if self._closed:
            return
        self._closed = True  # later publishes go straight to the spool
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._started:
            try:  # the sender finishes what is queued before it sees the stop
                self._queue.put(STOP, timeout=seconds_left(deadline))
            except queue.Full:
                pass  # it is stuck: what it did not take is spooled below
            self._sender.join(timeout=seconds_left(deadline))
            # A replayer that is only trying to connect holds nothing: not worth waiting for.
            self._replayer.join(timeout=seconds_left(deadline) if self._producer is not None else 0.1)
        producer = self._producer
        if producer is not None:
            try:  # sends that fail now are spooled by their errbacks
                producer.flush(timeout=seconds_left(deadline))
            except Exception as exc:
                log.warning("event producer did not flush in time: %s", exc)
            try:
                producer.close(timeout=seconds_left(deadline))
            except Exception as exc:  # kafka-python raises its own types; the spool already has the rest
                log.warning("event producer did not close cleanly: %s", exc)
        while True:  # anything the threads did not get to goes to disk
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not STOP:
                self._to_spool_safely(item)
        self.spool.close()
        SPOOL_BYTES.set(self._spool_bytes())
        # Let go of every folder, ours too: what is left in them is another process's to replay (a later
        # EventLog in this process included). Ours, left empty, goes: a short-lived process (the CLI publishing
        # a transition) must not leave a folder behind each time it runs.
        for lock, _ in self._adopted:
            lock.release()
        if self.spool.is_empty():
            self._own_folder.remove_folder()
        else:
            self._own_folder.release()

    def stats(self) -> dict[str, Any]:
        """Queue depth, spool size and this instance's counters (the Prometheus series add up all instances)."""
        with self._counts_lock:
            counts = dict(self._counts)
        return {"queued": self._queue.qsize(), "spool_bytes": self._spool_bytes(), "spooling": self._spooling,
                "connected": self._producer is not None,
                **{name: counts.get(name, 0) for name in ("produced", "spooled", "replayed", "send_errors",
                                                          "dropped", "unencodable")}}

    def _spool_bytes(self) -> int:
        """This process's spool and the adopted ones it is replaying."""
        return self.spool.bytes + sum(spool.bytes for _, spool in tuple(self._adopted))

    def _count(self, name: str, topic: str) -> None:
        OUTCOMES[name](topic).inc()
        with self._counts_lock:
            self._counts[name] += 1

    # ------------------------------------------------------------------ sending
    def _send_step(self) -> float:
        """One batch: every event in it is sent, spooled or counted, whatever happens to the others."""
        for item in self._next_batch(self._stop):
            try:
                if item is STOP:
                    self._sender_done.set()  # the events queued before it are still sent
                    continue
                self._route(as_envelope(item, self.source))
            except Exception:  # one bad event must not cost the rest of its batch
                log.exception("event log: could not handle %s", type(item).__name__)
                with self._counts_lock:
                    self._counts["unencodable"] += 1
            finally:
                self._queue.task_done()
        return 0.0  # the next batch waits on the queue, not on a timer

    def _route(self, envelope: Envelope) -> None:
        # Decided and spooled under one lock, so the replayer cannot declare the spool drained between
        # our decision and our append (the event would wait there until the next outage).
        with self._route_lock:
            if self._spooling or self._producer is None:
                self._spooling = True
                self._to_spool(envelope)
                return
        self._send(envelope, replay=False)

    def _send(self, envelope: Envelope, replay: bool):
        topic = self.topics[envelope.kind]
        with self._unacked_lock:
            self._unacked += 1
        try:
            future = self._producer.send(topic, key=envelope.key, value=envelope.value)
        except Exception as exc:  # KafkaTimeoutError when metadata is unavailable, and kin
            self._on_failure(envelope, exc, spool=not replay)
            return None
        future.add_callback(self._on_success, topic, replay)
        future.add_errback(self._on_error, envelope, not replay)
        return future

    def _on_success(self, topic: str, replay: bool, _metadata: Any) -> None:
        if replay:
            self._count("replayed", topic)
        else:
            self._count("produced", topic)
        with self._unacked_lock:
            self._unacked -= 1

    def _on_error(self, envelope: Envelope, spool: bool, exc: BaseException) -> None:
        self._on_failure(envelope, exc, spool)

    def _on_failure(self, envelope: Envelope, exc: BaseException, spool: bool) -> None:
        self._count("send_errors", self.topics[envelope.kind])
        with self._route_lock:
            if not self._spooling:
                log.warning("event broker unavailable (%s: %s); spooling events to %s",
                            type(exc).__name__, exc, self.spool.directory)
            self._spooling = True
            if spool:  # a failed replay keeps its segment instead: the same events are not spooled twice
                self._to_spool(envelope)
        with self._unacked_lock:
            self._unacked -= 1

    def _to_spool(self, envelope: Envelope) -> None:
        topic = self.topics[envelope.kind]
        if self.spool.append(envelope):  # False: over the cap or the disk refused it, logged once per episode
            self._count("spooled", topic)
        else:
            self._count("dropped", topic)
        SPOOL_BYTES.set(self._spool_bytes())

    def _to_spool_safely(self, data: EventData | Envelope) -> None:
        """The request-thread path to the spool: a disk error is logged and counted, never raised."""
        try:
            self._to_spool(as_envelope(data, self.source))
        except Exception:
            log.exception("event log: could not spool a %s", type(data).__name__)
            kind = data.kind if isinstance(data, Envelope) else getattr(data, "topic_kind", "")
            self._count("dropped", self.topics.get(kind, "unknown"))

    # ------------------------------------------------------------------ connecting and replaying
    def _connect(self) -> bool:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(**self._producer_config)
            try:
                ensure_topics(self.settings, timeout_ms=self.settings.connect_timeout_ms)
            except Exception:
                producer.close(timeout=1)
                raise
        except Exception as exc:  # NoBrokersAvailable, timeouts: try again later
            log.debug("event broker not reachable yet: %s", exc)
            self._tried_once.set()
            return False
        if self._stop.is_set():  # close() went on without us while we connected
            producer.close(timeout=1)
            return False
        self._producer = producer
        self._tried_once.set()
        log.info("event log connected to %s", self.settings.bootstrap_servers)
        return True

    def _reconnect(self) -> None:
        """Start over with a fresh producer: after a broker restart the old one may keep a producer id
        the new broker does not know, and fail every send."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=2)
            except Exception as exc:  # closing a producer whose broker is gone can fail; it is dropped anyway
                log.debug("closing the old producer: %s", exc)

    def _replay_step(self) -> float:
        """One pass: connect if need be, adopt orphaned folders, replay what is spooled; returns the wait."""
        self.spool.sync_if_due()  # fsync=batch: the last events of a burst reach the disk too
        if self._producer is None and not self._connect():
            return self.reconnect_interval_s
        if time.monotonic() >= self._next_adoption:  # a cheap look: one listing and a flock per sibling
            self._adopt_orphans()
            self._next_adoption = time.monotonic() + self.reconnect_interval_s
        if self._adopted and not self._replay_adopted():
            return self.reconnect_interval_s
        if self._spooling:
            self._drain_spool()
        return self.reconnect_interval_s if self._spooling else 0.2

    def _adopt_orphans(self) -> None:
        if self._closed:  # close() let go of every folder; taking new ones now would hold them for nothing
            return
        for lock in orphaned_folders(self._spool_root, exclude=self.spool.directory):
            try:
                spool = Spool(lock.folder, max_bytes=self.spool.max_bytes, fsync="never")
            except OSError:
                lock.release()  # not held for nothing: a later look, here or elsewhere, tries again
                raise
            if spool.is_empty():  # a process that ended with nothing spooled
                lock.remove_folder()
                continue
            log.info("adopting %d bytes of spooled events from %s, whose process is gone",
                     spool.bytes, lock.folder)
            self._adopted.append((lock, spool))
        SPOOL_BYTES.set(self._spool_bytes())

    def _replay_adopted(self) -> bool:
        """Replay the adopted folders, each in its own order; True once all of them are delivered and gone."""
        for lock, spool in tuple(self._adopted):
            if not self._replay_segments(spool):
                return False
            self._adopted.remove((lock, spool))
            lock.remove_folder()
            log.info("delivered every event spooled in %s", lock.folder)
        return True

    def _drain_spool(self) -> None:
        self.spool.seal()
        if not self._replay_segments(self.spool):
            return
        with self._route_lock:
            self.spool.seal()  # events spooled while we replayed are in a new segment: go round again
            if self.spool.is_empty():
                self._spooling = False
                log.info("event spool drained; sending straight to the broker again")

    def _replay_segments(self, spool: Spool) -> bool:
        """Send a spool's sealed segments in order, deleting each once acknowledged; False if interrupted."""
        for segment in spool.sealed_segments():
            if self._stop.is_set():
                return False
            try:
                envelopes = spool.read_segment(segment)
            except FileNotFoundError:  # deleted under us (by hand, a cleanup job): the rest still goes
                log.warning("spool segment %s vanished before it was replayed; its events are lost", segment)
                spool.remove(segment)
                continue
            futures = [self._send(env, replay=True) for env in envelopes]
            if any(f is None for f in futures):
                return False
            try:
                self._producer.flush(timeout=30)
                for future in futures:
                    future.get(timeout=0)
            except Exception as exc:  # the broker went away mid-replay: keep the segment, retry later
                log.warning("replay of %s interrupted (%s); reconnecting to retry", segment.name, exc)
                self._reconnect()
                return False
            spool.remove(segment)
            SPOOL_BYTES.set(self._spool_bytes())
            log.info("replayed %d spooled events from %s", len(envelopes), segment)
        return True
