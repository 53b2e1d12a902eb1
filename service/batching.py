"""Adaptive micro-batching shared by every transport.

Requests queue up while a batch runs; the worker then takes everything waiting (up to
``max_batch_size`` texts, waiting at most ``max_latency_ms`` for more), so batches grow with load
and a lone request is not held back. The texts of a batch are sorted by length and cut into
buckets, so short texts are not padded to the length of a long one, and each request is answered as
soon as the bucket holding its last text has run.

We batch ourselves rather than with BentoML's ``batchable`` API, for two reasons. The gRPC server runs
beside BentoML, outside its dispatcher: one batcher is the only way for HTTP and gRPC traffic to share
batches. And it measured better: the same model and length buckets behind ``batchable``
(bench/batchable_service.py) served 0.56–0.73× this batcher's throughput at concurrency 8 and 32, and a
lone request waits for BentoML's dispatcher to re-learn its queue after a burst (bench/RESULTS.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from service.metrics import BATCH_SIZE, INFERENCE_DURATION, PREDICTIONS
from service.model import ServedModel
from tuneloop.inference import Tokenized, softmax

log = logging.getLogger(__name__)


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


@dataclass
class _Pending:
    texts: list[str]
    future: Future
    enqueued: float


class MicroBatcher:
    def __init__(self, current_model: Callable[[], ServedModel], max_batch_size: int = 32,
                 max_latency_ms: float = 2.0, run_overhead_tokens: int | None = None) -> None:
        self._current_model = current_model
        self.run_overhead_tokens = run_overhead_tokens
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="tuneloop-batcher", daemon=True)
        self._worker.start()

    def submit(self, texts: list[str]) -> Future:
        future: Future = Future()
        if self._stopping:
            future.set_exception(RuntimeError("the service is shutting down"))
            return future
        if not texts:  # answered when its last text has run, so a request without texts would never be
            future.set_exception(ValueError("nothing to classify: no texts"))
            return future
        self._queue.put(_Pending(texts, future, time.perf_counter()))
        return future

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every queued request, then stop (graceful shutdown drains, it does not drop)."""
        self._stopping = True
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=timeout)

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, size = [first], len(first.texts)
        deadline = first.enqueued + self.max_latency
        while size < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.texts)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            self._execute(batch)
        while True:  # drain whatever arrived before the stop marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._execute([item])

    def _execute(self, batch: list[_Pending]) -> None:
        """Run a batch bucket by bucket, answering each request as soon as its last text has run.

        The short buckets run first, so their clients have their answers, and send their next requests,
        while the long buckets still run: the event loop's work overlaps inference instead of waiting for
        the batch's slowest bucket, and the next batch is already queued when this one ends."""
        rows_left = np.array([len(p.texts) for p in batch])  # a request is answered when its count is 0
        bounds = np.concatenate(([0], np.cumsum(rows_left)))
        owner = np.repeat(np.arange(len(batch)), rows_left)
        try:
            model = self._current_model()  # one model for the whole batch: every row names its version
            tokens = model.classifier.tokenize([t for p in batch for t in p.texts])  # once; padded per bucket
            result = _BatchResult.empty(model, tokens)
            for rows in self._run_buckets(model, tokens, result):
                for i in owner[rows]:
                    rows_left[i] -= 1
                    if rows_left[i] == 0:
                        start, end = bounds[i], bounds[i + 1]
                        self._answer(batch[i], BatchOutput(model, result.probabilities[start:end],
                                                           result.embeddings[start:end],
                                                           result.truncated[start:end]))
        except Exception as exc:  # hand the failure to every request still waiting; the worker lives on
            for pending, left in zip(batch, rows_left):
                if left and pending.future.set_running_or_notify_cancel():
                    pending.future.set_exception(exc)

    @staticmethod
    def _answer(pending: _Pending, output: BatchOutput) -> None:
        if pending.future.set_running_or_notify_cancel():
            pending.future.set_result(output)

    def _run_buckets(self, model: ServedModel, tokens: Tokenized, result: _BatchResult) -> Iterator[np.ndarray]:
        """Fill ``result`` one length bucket at a time, shortest first, and yield each bucket's rows (indices
        into the batch's texts) once they are filled."""
        for run in model.classifier.run_buckets(tokens, self.max_batch_size, self.run_overhead_tokens):
            INFERENCE_DURATION.labels(model.version).observe(run.seconds)
            BATCH_SIZE.labels(model.version).observe(len(run.rows))
            # Here rather than once per request on the event loop, which every transport waits on.
            probabilities = softmax(run.logits)
            for label, count in zip(*np.unique(probabilities.argmax(axis=1), return_counts=True)):
                PREDICTIONS.labels(model.version, model.labels[label]).inc(int(count))
            result.probabilities[run.rows] = probabilities
            result.embeddings[run.rows] = run.embeddings
            yield run.rows
