"""EventLog: publish events to Kafka without ever making a request wait, and without losing one.

    request thread ──put_nowait──▶ bounded queue ──sender thread──▶ KafkaProducer (acks=all)
          │ (queue full)                 │ (broker down / send failed)
          └────────────────────────────▶ spool (segment files) ──replayer thread──▶ Kafka, in order

start() never waits for the broker: until the replayer first reaches it, and during every outage,
events go to the spool. While the spool holds events, new events join it rather than overtake them; once the replayer has
drained it, events flow straight to the broker again. Delivery is at-least-once: a crash between a
send and the deletion of its segment replays events the broker already has, and consumers drop
duplicates by the CloudEvent id.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

from tuneloop.events.client_config import ensure_topics, producer_config, topic_names
from tuneloop.events.envelope import Envelope, wrap
from tuneloop.events.metrics import DROPPED, PRODUCED, REPLAYED, SEND_ERRORS, SPOOL_BYTES, SPOOLED
from tuneloop.events.schemas import EventData, FeedbackEvent, ModelEvent, PredictionEvent
from tuneloop.events.spool import Spool
from tuneloop.settings import KafkaSettings

log = logging.getLogger(__name__)

_STOP = object()


class EventLog:
    """Publishes events from any thread without blocking it; see the module docstring for the paths."""

    def __init__(self, settings: KafkaSettings, source: str = "tuneloop-service",
                 reconnect_interval_s: float | None = None) -> None:
        self.settings = settings
        self.source = source
        self.topics = topic_names(settings)
        self._producer_config = producer_config(settings)  # a bad TLS/SASL/codec setting fails here, loudly
        self.reconnect_interval_s = reconnect_interval_s or settings.reconnect_interval_s
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes, settings.spool_fsync,
                           segment_bytes=settings.spool_segment_bytes,
                           batch_fsync_interval_s=settings.spool_fsync_interval_ms / 1000)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._linger_s = settings.linger_ms / 1000
        self._max_batch = max(1, settings.queue_size // 2)
        self._producer = None
        self._route_lock = threading.Lock()  # "spool or send" and "spool drained" decide under it
        self._spooling = not self.spool.is_empty()  # a previous process left events behind
        self._stop = threading.Event()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._unacked = 0
        self._unacked_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        for topic in self.topics.values():  # every series shows from the start, at 0
            for metric in (PRODUCED, SPOOLED, REPLAYED, SEND_ERRORS, DROPPED):
                metric.labels(topic)
        SPOOL_BYTES.set(self.spool.bytes)
        for topic in self.topics.values():  # zero series, so "nothing spooled or dropped" reads as 0
            for counter in (PRODUCED, SPOOLED, REPLAYED, SEND_ERRORS, DROPPED):
                counter.labels(topic)

    # ------------------------------------------------------------------ the request side
    def publish_prediction(self, event: PredictionEvent) -> None:
        self._publish(event)

    def publish_feedback(self, event: FeedbackEvent) -> None:
        self._publish(event)

    def publish_model_event(self, event: ModelEvent) -> None:
        self._publish(event)

    def _publish(self, data: EventData) -> None:
        """Never blocks and never raises: a full queue (or a closed log) sends the event to the spool instead."""
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(data)
        except queue.Full:
            self._to_spool_safely(data)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the sender and the replayer; returns at once, the broker is reached in the background."""
        for target, name in ((self._send_loop, "tuneloop-event-sender"), (self._replay_loop, "tuneloop-event-replayer")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every published event is acknowledged or spooled; True if that happened in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                producer = self._producer
                if producer is not None:
                    try:
                        producer.flush(timeout=max(0.1, deadline - time.monotonic()))
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
        if self._threads:
            try:  # the sender finishes what is queued before it sees the stop
                self._queue.put(_STOP, timeout=max(0.1, deadline - time.monotonic()))
            except queue.Full:
                pass  # it is stuck: what it did not take is spooled below
        sender, replayer = self._threads or (None, None)
        if sender is not None:
            sender.join(timeout=max(0.1, deadline - time.monotonic()))
        if replayer is not None:
            # A replayer that is only trying to connect holds nothing: not worth waiting for.
            replayer.join(timeout=max(0.1, deadline - time.monotonic()) if self._producer is not None else 0.1)
        producer = self._producer
        if producer is not None:
            try:  # sends that fail now are spooled by their errbacks
                producer.flush(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("event producer did not flush in time: %s", exc)
            try:
                producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # kafka-python raises its own types; the spool already has the rest
                log.warning("event producer did not close cleanly: %s", exc)
        while True:  # anything the threads did not get to goes to disk
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._to_spool_safely(item)
        self.spool.close()
        SPOOL_BYTES.set(self.spool.bytes)

    def stats(self) -> dict[str, Any]:
        """Queue depth, spool size and this instance's counters (the Prometheus series add up all instances)."""
        with self._counts_lock:
            counts = dict(self._counts)
        return {"queued": self._queue.qsize(), "spool_bytes": self.spool.bytes, "spooling": self._spooling,
                "connected": self._producer is not None,
                **{name: counts.get(name, 0) for name in ("produced", "spooled", "replayed", "send_errors",
                                                          "dropped", "unencodable")}}

    def _count(self, name: str, metric: Any, topic: str) -> None:
        metric.labels(topic).inc()
        with self._counts_lock:
            self._counts[name] += 1

    # ------------------------------------------------------------------ sending
    def _send_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = self._next_batch()
            for item in batch:
                try:
                    if item is _STOP:
                        stopping = True  # the events queued before it are still sent
                        continue
                    self._route(wrap(item, self.source))
                except Exception:  # one bad event must not stop the thread every later event relies on
                    log.exception("event log: could not handle %s", type(item).__name__)
                    with self._counts_lock:
                        self._counts["unencodable"] += 1
                finally:
                    self._queue.task_done()

    def _next_batch(self) -> list[Any]:
        """Wait for an event, let more gather for ``linger_ms``, then take them all.

        Waking this thread (and through it kafka-python's) once per event cost more CPU than sending
        the event (bench/RESULTS.md); one wake-up per batch takes that CPU back from inference.
        """
        batch = [self._queue.get()]
        if batch[0] is not _STOP and self._linger_s > 0:
            self._stop.wait(self._linger_s)  # close() cuts the wait short
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

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
            self._count("replayed", REPLAYED, topic)
        else:
            self._count("produced", PRODUCED, topic)
        with self._unacked_lock:
            self._unacked -= 1

    def _on_error(self, envelope: Envelope, spool: bool, exc: BaseException) -> None:
        self._on_failure(envelope, exc, spool)

    def _on_failure(self, envelope: Envelope, exc: BaseException, spool: bool) -> None:
        self._count("send_errors", SEND_ERRORS, self.topics[envelope.kind])
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
        if self.spool.append(envelope):
            self._count("spooled", SPOOLED, topic)
        else:
            self._count("dropped", DROPPED, topic)
        SPOOL_BYTES.set(self.spool.bytes)

    def _to_spool_safely(self, data: EventData) -> None:
        """The request-thread path to the spool: a disk error is logged and counted, never raised."""
        try:
            self._to_spool(wrap(data, self.source))
        except Exception:
            log.exception("event log: could not spool a %s", type(data).__name__)
            self._count("dropped", DROPPED, self.topics.get(getattr(data, "topic_kind", ""), "unknown"))

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
            return False
        if self._stop.is_set():  # close() went on without us while we connected
            producer.close(timeout=1)
            return False
        self._producer = producer
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

    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            self.spool.sync_if_due()  # fsync=batch: the last events of a burst reach the disk too
            if self._producer is None and not self._connect():
                self._stop.wait(self.reconnect_interval_s)
                continue
            if self._spooling:
                self._drain_spool()
            self._stop.wait(self.reconnect_interval_s if self._spooling else 0.2)

    def _drain_spool(self) -> None:
        self.spool.seal()
        for segment in self.spool.sealed_segments():
            if self._stop.is_set():
                return
            envelopes = self.spool.read_segment(segment)
            futures = [self._send(env, replay=True) for env in envelopes]
            if any(f is None for f in futures):
                return
            try:
                self._producer.flush(timeout=30)
                for future in futures:
                    future.get(timeout=0)
            except Exception as exc:  # the broker went away mid-replay: keep the segment, retry later
                log.warning("replay of %s interrupted (%s); reconnecting to retry", segment.name, exc)
                self._reconnect()
                return
            self.spool.remove(segment)
            SPOOL_BYTES.set(self.spool.bytes)
            log.info("replayed %d spooled events from %s", len(envelopes), segment.name)
        with self._route_lock:
            self.spool.seal()  # events spooled while we replayed are in a new segment: go round again
            if self.spool.is_empty():
                self._spooling = False
                log.info("event spool drained; sending straight to the broker again")
