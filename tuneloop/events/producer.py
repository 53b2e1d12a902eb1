"""EventLog: publish events to Kafka without ever making a request wait, and without losing one.

    request thread ──put_nowait──▶ bounded queue ──sender thread──▶ KafkaProducer (acks=all)
          │ (queue full)                 │ (broker down / send failed)
          └────────────────────────────▶ spool (segment files) ──replayer thread──▶ Kafka, in order

While the spool holds events, new events join it rather than overtake them; once the replayer has
drained it, events flow straight to the broker again. Delivery is at-least-once: a crash between a
send and the deletion of its segment replays events the broker already has, and consumers drop
duplicates by the CloudEvent id.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from tuneloop.events.client_config import common_config, ensure_topics, topic_names
from tuneloop.events.envelope import Envelope, wrap
from tuneloop.events.metrics import DROPPED, PRODUCED, REPLAYED, SEND_ERRORS, SPOOL_BYTES, SPOOLED
from tuneloop.events.schemas import EventData, FeedbackEvent, ModelEvent, PredictionEvent
from tuneloop.events.spool import Spool
from tuneloop.settings import KafkaSettings

log = logging.getLogger(__name__)

_STOP = object()


class EventLog:
    def __init__(self, settings: KafkaSettings, source: str = "tuneloop-service",
                 reconnect_interval_s: float = 1.0) -> None:
        self.settings = settings
        self.source = source
        self.topics = topic_names(settings)
        self.reconnect_interval_s = reconnect_interval_s
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes, settings.spool_fsync)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._producer = None
        self._route_lock = threading.Lock()  # "spool or send" and "spool drained" decide under it
        self._spooling = not self.spool.is_empty()  # a previous process left events behind
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unacked = 0
        self._unacked_lock = threading.Lock()
        SPOOL_BYTES.set(self.spool.bytes)

    # ------------------------------------------------------------------ the request side
    def publish_prediction(self, event: PredictionEvent) -> None:
        self._publish(event)

    def publish_feedback(self, event: FeedbackEvent) -> None:
        self._publish(event)

    def publish_model_event(self, event: ModelEvent) -> None:
        self._publish(event)

    def _publish(self, data: EventData) -> None:
        """Never blocks and never raises: a full queue sends the event to the spool instead."""
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self._to_spool(wrap(data, self.source))

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
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
                    producer.flush(timeout=max(0.1, deadline - time.monotonic()))
                with self._unacked_lock:
                    if self._unacked == 0:
                        return True
            time.sleep(0.02)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Deliver or spool everything still queued, then stop; nothing published is lost."""
        self._queue.put(_STOP)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(timeout=timeout)
                producer.close(timeout=timeout)
            except Exception as exc:  # kafka-python raises its own types; the spool already has the rest
                log.warning("event producer did not close cleanly: %s", exc)
        while True:  # anything the threads did not get to goes to disk
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._to_spool(wrap(item, self.source))
        self.spool.close()

    def stats(self) -> dict[str, Any]:
        return {"queued": self._queue.qsize(), "spool_bytes": self.spool.bytes, "spooling": self._spooling,
                "connected": self._producer is not None, "dropped": self.spool.dropped}

    # ------------------------------------------------------------------ sending
    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._route(wrap(item, self.source))
            finally:
                self._queue.task_done()

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
        (REPLAYED if replay else PRODUCED).labels(topic).inc()
        with self._unacked_lock:
            self._unacked -= 1

    def _on_error(self, envelope: Envelope, spool: bool, exc: BaseException) -> None:
        self._on_failure(envelope, exc, spool)

    def _on_failure(self, envelope: Envelope, exc: BaseException, spool: bool) -> None:
        SEND_ERRORS.labels(self.topics[envelope.kind]).inc()
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
            SPOOLED.labels(topic).inc()
        else:
            DROPPED.labels(topic).inc()
        SPOOL_BYTES.set(self.spool.bytes)

    # ------------------------------------------------------------------ connecting and replaying
    def _connect(self) -> bool:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                **common_config(self.settings), acks="all", retries=5, compression_type="gzip",
                linger_ms=5, batch_size=64 * 1024, max_block_ms=2000, request_timeout_ms=5000,
                delivery_timeout_ms=15000, reconnect_backoff_max_ms=2000,
            )
            ensure_topics(self.settings)
        except Exception as exc:  # NoBrokersAvailable, timeouts: try again later
            log.debug("event broker not reachable yet: %s", exc)
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
