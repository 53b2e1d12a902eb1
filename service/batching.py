"""Adaptive micro-batching shared by every transport.

Requests queue up while a batch runs; the worker then takes everything waiting (up to the provider's batch
cap, ``BatchLimits``), so batches grow with load. It waits for more (at most ``max_latency_ms`` after the
first request) only while the batch is smaller than recent batches were: under steady load that fills a
batch its clients are about to send, and a request alone with the model is run at once, never held for a
window nobody else will use. The texts of a batch are sorted by length and cut into buckets, so short texts
are not padded to the length of a long one, and each request is answered as soon as the bucket holding its
last text has run.

We batch ourselves rather than with BentoML's ``batchable`` API, for two reasons. The gRPC server runs
beside BentoML, outside its dispatcher: one batcher is the only way for HTTP and gRPC traffic to share
batches. And it measured better: the same model and length buckets behind ``batchable``
(bench/batchable_service.py) served 0.56–0.73× this batcher's throughput at concurrency 8 and 32, and a
lone request waits for BentoML's dispatcher to re-learn its queue after a burst (bench/RESULTS.md).

The queue is bounded by the texts waiting in it (``max_queue_texts``): past it ``submit`` refuses at once
(OverloadedError: 503 with Retry-After, RESOURCE_EXHAUSTED), so under overload the admitted requests wait for
at most a queue's worth of batches instead of an ever longer line. A request whose client gave up (its future
cancelled: an HTTP client that disconnected, a gRPC call cancelled or past its deadline) is dropped when the
worker takes it, before it is tokenised or run.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from service.errors import OverloadedError, ServiceError
from service.metrics import BATCH_SIZE_BY, DROPPED, INFERENCE_DURATION_BY, PREDICTIONS_BY, QUEUED_TEXTS, REJECTED
from service.model import ServedModel
from tuneloop.inference import MAX_BATCH_TEXTS, Tokenized, choose_providers, softmax
from tuneloop.settings import ServingSettings
from tuneloop.supervision import SupervisedLoop

log = logging.getLogger(__name__)


# The queue holds this many full batches by default: an admitted request waits for at most about as many runs.
QUEUED_BATCHES = 8


@dataclass(frozen=True)
class BatchLimits:
    """How many texts a batch takes and how many may wait, settled once for the provider the model runs on."""

    max_batch_texts: int
    max_queue_texts: int
    provider: str  # the ONNX Runtime execution provider they were settled for

    @classmethod
    def for_provider(cls, settings: ServingSettings, provider: str) -> BatchLimits:
        batch = settings.max_batch_size or MAX_BATCH_TEXTS.get(provider, MAX_BATCH_TEXTS["CPUExecutionProvider"])
        return cls(batch, settings.max_queue_texts or QUEUED_BATCHES * batch, provider)

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> BatchLimits:
        """The limits for the provider ``serving.provider`` chooses (the one the served model is opened on)."""
        return cls.for_provider(settings, choose_providers(settings.provider)[0])


@dataclass(frozen=True)
class BatchOutput:
    """What one submission gets back: rows in the order of its texts, and the model that made them."""

    model: ServedModel
    probabilities: np.ndarray
    embeddings: np.ndarray
    truncated: list[bool]


@dataclass
class _BatchResult:
    """A batch's outputs, filled in bucket by bucket; rows in the order of the batch's texts."""

    probabilities: np.ndarray
    embeddings: np.ndarray
    truncated: list[bool]

    @classmethod
    def empty(cls, model: ServedModel, tokens: Tokenized) -> _BatchResult:
        rows = len(tokens.ids)
        return cls(np.empty((rows, len(model.labels)), dtype=np.float32),
                   np.empty((rows, model.classifier.embedding_dim), dtype=np.float32), tokens.truncated)


Outcome = BatchOutput | BaseException


@dataclass
class _Pending:
    texts: list[str]
    future: Future | asyncio.Future
    enqueued: float
    loop: asyncio.AbstractEventLoop | None = None  # an asyncio future's loop: the answer is set there

    def take(self) -> bool:
        """Mark the request taken by the worker; False if its caller has given up on it (drop it unrun)."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()  # a cancel from now on only discards the answer


def _settle(future: Future | asyncio.Future, outcome: Outcome) -> None:
    if future.done():  # an asyncio caller that gave up while its batch ran
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _settle_all(answers: list[tuple[asyncio.Future, Outcome]]) -> None:
    for future, outcome in answers:
        _settle(future, outcome)


def answer(answers: list[tuple[_Pending, Outcome]]) -> None:
    """Hand outcomes to their callers: a thread's future at once, asyncio futures with one call into each
    event loop for all of them. Waking a loop costs more than setting a result there (a write to its
    self-pipe, a turn of the loop); per bucket instead of per request, that cost is shared by the bucket's
    requests (bench/RESULTS.md)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Outcome]]] = {}
    for pending, outcome in answers:
        if pending.loop is None:
            _settle(pending.future, outcome)
        else:
            by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, settled)
        except RuntimeError:  # the loop was closed: nobody waits for these answers any more
            log.debug("dropped %d answers for a closed event loop", len(settled))


class MicroBatcher:
    def __init__(self, current_model: Callable[[], ServedModel], settings: ServingSettings) -> None:
        self._current_model = current_model
        self.run_overhead_tokens = settings.bucket_run_overhead_tokens
        self._settings = settings
        self.limits = BatchLimits.from_settings(settings)  # the provider asked for, until a model is served
        self.max_latency = settings.max_latency_ms / 1000.0
        # Texts per batch lately (a moving average): how large a batch the current load fills. A lone client's
        # batches are of one text, so its requests never wait for company.
        self._recent_batch_texts = 1.0
        self.retry_after_s = settings.retry_after_s
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._queued_texts = 0  # submitted, not yet taken by the worker; guarded by _lock
        self._lock = threading.Lock()
        self._stopping = False
        self._draining = False  # the stop marker was taken: run what is left, then end
        # One step is one batch. A batch that fails has failed its own requests; the next batch's requests
        # deserve their try at once, so there is no backoff, only the log line and the count.
        self._worker = SupervisedLoop("tuneloop-batcher", self._step, initial_backoff_s=0.0, max_backoff_s=0.0)
        REJECTED.labels("queue_full")  # shown from the start, at 0

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def start(self) -> None:
        self._worker.start()

    def follow_provider(self, provider: str) -> None:
        """Take the limits of the provider the served model runs on. ONNX Runtime falls back to the CPU when the
        CUDA provider cannot start; a CPU given CUDA's batches (256 texts, a 2,048-text queue) would keep
        admitted requests waiting for seconds."""
        if provider != self.limits.provider:
            log.info("batch limits follow the served model onto %s", provider)
            self.limits = BatchLimits.for_provider(self._settings, provider)

    def submit(self, texts: list[str]) -> Future:
        """Queue ``texts`` for the model; the future gets their BatchOutput. Raises OverloadedError, at once,
        when the queue holds ``max_queue_texts`` texts already."""
        future: Future = Future()
        self._enqueue(texts, future, None)
        return future

    async def infer(self, texts: list[str]) -> BatchOutput:
        """``submit`` for a coroutine: the answer is set on its own event loop, together with the other answers
        of its bucket for that loop. Cancelling the caller (a gRPC deadline, a disconnected HTTP client) before
        the worker takes the request drops it unrun."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(texts, future, loop)
        return await future

    def _enqueue(self, texts: list[str], future: Future | asyncio.Future,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        if not texts:  # answered when its last text has run, so a request without texts would never be
            future.set_exception(ValueError("nothing to classify: no texts"))
            return
        with self._lock:  # as stop() takes it too, nothing is queued behind the stop marker
            stopping, waiting = self._stopping, self._queued_texts
            # An empty queue takes a request of any size: one larger than the limit could never get in.
            refused = bool(waiting) and waiting + len(texts) > self.limits.max_queue_texts
            if not (stopping or refused):
                self._queued_texts = waiting + len(texts)
                self._queue.put(_Pending(texts, future, time.perf_counter(), loop))
        if stopping:
            future.set_exception(RuntimeError("the service is shutting down"))
        elif refused:
            REJECTED.labels("queue_full").inc()
            QUEUED_TEXTS.set(waiting)  # a full queue shows even while the worker is stuck in a batch
            raise OverloadedError(f"overloaded: {waiting} texts are waiting for the model (the limit is "
                                  f"{self.limits.max_queue_texts}); retry in {self.retry_after_s} s",
                                  self.retry_after_s)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued request, then stop (graceful shutdown drains, it does not drop)."""
        with self._lock:
            self._stopping = True
            self._queue.put(None)
        self._worker.join(timeout=timeout)

    def _take(self, deadline: float | None) -> _Pending | None:
        """The next request whose client still waits, or None: none came by ``deadline`` (perf_counter;
        None waits for one), or the queue is empty once draining. Cancelled requests are dropped here,
        before they cost the model anything; the ones returned are marked running (no longer cancellable)."""
        while True:
            try:
                if self._draining:
                    item = self._queue.get_nowait()
                elif deadline is None:
                    item = self._queue.get()
                else:
                    remaining = deadline - time.perf_counter()
                    item = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if item is None:
                self._draining = True
                continue
            with self._lock:
                self._queued_texts -= len(item.texts)
            if item.take():
                return item
            DROPPED.inc()

    def _collect(self, first: _Pending) -> list[_Pending]:
        """``first`` and what waits behind it. While the batch is smaller than recent ones, wait for more until
        ``max_latency`` after ``first`` was queued; past that size take only what is already queued."""
        batch, size = [first], len(first.texts)
        deadline = first.enqueued + self.max_latency
        expected = min(self.limits.max_batch_texts, round(self._recent_batch_texts))
        while size < self.limits.max_batch_texts:
            item = self._take(deadline if size < expected else 0.0)  # 0.0: a deadline long past, no wait
            if item is None:
                break
            batch.append(item)
            size += len(item.texts)
        # Half the weight on the last batch: after a burst, a lone client waits for company at most a few times.
        self._recent_batch_texts = (self._recent_batch_texts + size) / 2
        return batch

    def _step(self) -> None:
        """One batch: wait for a request, gather what else comes within ``max_latency``, run them. Once the
        stop marker is taken, the steps go on without waiting until the queue is empty, then end the loop."""
        first = self._take(None)
        if first is None:  # draining, and nothing is left
            self._worker.stop_event.set()
            return
        batch = self._collect(first)
        # Once a batch rather than at every submit and take: in multiprocess mode a gauge write takes a
        # process-wide lock that the event loop and this thread then contend for (bench/RESULTS.md).
        QUEUED_TEXTS.set(self._queued_texts)
        self._execute(batch)

    def _execute(self, batch: list[_Pending]) -> None:
        """Run a batch bucket by bucket, answering each request as soon as its last text has run.

        The short buckets run first, so their clients have their answers, and send their next requests,
        while the long buckets still run: the event loop's work overlaps inference instead of waiting for
        the batch's slowest bucket, and the next batch is already queued when this one ends."""
        # Plain lists: a batch holds at most a few hundred texts, where numpy's per-call cost exceeds the work.
        rows_left = [len(p.texts) for p in batch]  # a request is answered when its count is 0
        bounds = list(accumulate(rows_left, initial=0))
        owner = [i for i, count in enumerate(rows_left) for _ in range(count)]
        try:
            model = self._current_model()  # one model for the whole batch: every row names its version
            tokens = model.classifier.tokenize([t for p in batch for t in p.texts])  # once; padded per bucket
            result = _BatchResult.empty(model, tokens)
            for rows in self._run_buckets(model, tokens, result):
                finished = []
                for i in map(owner.__getitem__, rows.tolist()):
                    rows_left[i] -= 1
                    if rows_left[i] == 0:
                        start, end = bounds[i], bounds[i + 1]
                        finished.append((batch[i], BatchOutput(model, result.probabilities[start:end],
                                                               result.embeddings[start:end],
                                                               result.truncated[start:end])))
                answer(finished)
        except Exception as exc:  # hand the failure to every request still waiting; the worker lives on
            answer([(pending, exc) for pending, left in zip(batch, rows_left) if left])
            if not isinstance(exc, ServiceError):  # unexpected: the supervisor logs and counts it
                raise

    def _run_buckets(self, model: ServedModel, tokens: Tokenized, result: _BatchResult) -> Iterator[np.ndarray]:
        """Fill ``result`` one length bucket at a time, shortest first, and yield each bucket's rows (indices
        into the batch's texts) once they are filled."""
        for run in model.classifier.run_buckets(tokens, self.limits.max_batch_texts, self.run_overhead_tokens):
            INFERENCE_DURATION_BY(model.version).observe(run.seconds)
            BATCH_SIZE_BY(model.version).observe(len(run.rows))
            # Here rather than once per request on the event loop, which every transport waits on.
            probabilities = softmax(run.logits)
            counts = np.bincount(probabilities.argmax(axis=1), minlength=len(model.labels))
            for label in np.flatnonzero(counts):
                PREDICTIONS_BY(model.version, model.labels[label]).inc(int(counts[label]))
            result.probabilities[run.rows] = probabilities
            result.embeddings[run.rows] = run.embeddings
            yield run.rows
