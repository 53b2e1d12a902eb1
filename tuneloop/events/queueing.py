"""The request side every event log shares: publishing only enqueues, and a background thread takes the
queue a batch at a time.

EventLog (tuneloop/events/producer.py) sends its batches to Kafka itself; ShippedEventLog
(tuneloop/events/shipper.py) hands them to a shipper process. Both say what happens to an event the queue
cannot take (``_overflow``: the spool), so publishing never blocks a request and never loses an event.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from tuneloop.events.envelope import Envelope
from tuneloop.events.schemas import EventData, FeedbackEvent, ModelEvent, PredictionEvent
from tuneloop.settings import KafkaSettings

STOP = object()  # queued by close(): the events before it are handled, then the thread ends


def seconds_left(deadline: float) -> float:
    """Seconds to ``deadline`` (time.monotonic()), never less than a tenth: each step of a close() or flush()
    that counts down one deadline gets a last look, however late it comes."""
    return max(0.1, deadline - time.monotonic())


class QueuedPublisher:
    def __init__(self, settings: KafkaSettings) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._linger_s = settings.linger_ms / 1000
        self._max_batch = max(1, settings.queue_size // 2)
        self._closed = False

    def publish_prediction(self, event: PredictionEvent) -> None:
        self._publish(event)

    def publish_feedback(self, event: FeedbackEvent) -> None:
        self._publish(event)

    def publish_model_event(self, event: ModelEvent) -> None:
        self._publish(event)

    def _publish(self, data: EventData | Envelope) -> None:
        """Never blocks and never raises: what a full queue (or a closed log) cannot take overflows."""
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(data)
        except queue.Full:
            self._overflow(data)

    def _overflow(self, data: EventData | Envelope) -> None:
        """Keep an event the queue could not take (spool it); must neither block for long nor raise."""
        raise NotImplementedError

    def _next_batch(self, lingering: threading.Event, wait_s: float | None = None) -> list[Any]:
        """Wait for an event (at most ``wait_s``; [] if none came), let more gather for ``linger_ms``, then
        take them all. Waking the thread once per event cost more CPU than sending it (bench/RESULTS.md); once
        per batch takes that CPU back from inference. Setting ``lingering`` (close()) cuts the wait short."""
        try:
            batch = [self._queue.get(timeout=wait_s)]
        except queue.Empty:
            return []
        if batch[0] is not STOP and self._linger_s > 0:
            lingering.wait(self._linger_s)
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch
