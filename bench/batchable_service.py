"""The comparison variant for the batching decision: tuneloop's model behind BentoML's own adaptive batching
(``@bentoml.api(batchable=True)``) instead of the project's MicroBatcher (service/batching.py).

    BATCHABLE_REGISTRY=bench/.work/registry [BATCHABLE_VERSION=v1] \
        bentoml serve bench.batchable_service:Batchable

Everything but the batch former is the real service's: the same registered version, loaded, warmed up and
smoke-checked by the same code (service.model.load_served_model: the same precision, token limit, ONNX Runtime
threads and spinning), the same request and response JSON on ``POST /classify``, and the same inference per
batch (tokenise once, the session's run_buckets: cut length buckets, one ``session.run`` per bucket).

How batches form. ``/classify`` is a plain async API that keeps the real service's response shape; it calls
``infer``, a batchable API of the same service, through ``self.to_async``. BentoML (1.4) sends such a
self-call through its own ASGI app, in process, so it reaches the CorkDispatcher, which merges the texts of
concurrent calls into one list (at most ``max_batch_size`` texts: a request with more is split over two
batches and joined again), runs ``infer`` on it in a worker thread, one batch at a time, and hands each
caller its slice back. The documented alternative, a batchable API on a second service reached with
``bentoml.depends``, puts the model in a second process behind a socket; this keeps one process, as the
real service has. A batchable API cannot be /classify itself: its answer must be a list split per request.

When a batch goes is the dispatcher's call: it waits while the queue is short compared with the average
wait it has seen (a running mean over its last 50 batches, refreshed at most every 5 s). That mean follows
the load slowly: after a burst, lone requests keep waiting for company that does not come (by hand on 2
busy cores, a Python client at c=1: 80-105 requests/s fresh, 45-60 for about a minute after 4 s at c=8).

Bench only: no hot swap, no tuneloop_* metrics, no event log, and only the input checks the bench needs.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import uuid

import bentoml
import numpy as np
from pydantic import BaseModel
from starlette.responses import JSONResponse

from service.batching import BatchLimits
from service.classify_schema import ClassifyResponse, PredictionOut
from service.model import load_served_model
from tuneloop.inference import softmax
from tuneloop.registry import Registry
from tuneloop.settings import get_settings

# BentoML's logger tree is the one `bentoml serve` prints.
log = logging.getLogger("bentoml.bench.batchable")
SERVING = get_settings().serving
MAX_BATCH = BatchLimits.from_settings(SERVING).max_batch_texts
REGISTRY = os.environ["BATCHABLE_REGISTRY"]  # a registry root, as `tuneloop serve --registry`
VERSION = os.environ.get("BATCHABLE_VERSION")  # unset: the registry's production version
LOG_BATCHES = os.environ.get("BATCHABLE_LOG_BATCHES", "") not in ("", "0", "false")

# BentoML's max_latency_ms is not a batch window like MicroBatcher's max_latency_ms (2 ms): it is a deadline.
# The dispatcher waits as long as its own regression of past batches says is worth it, and sheds with a 503
# any queued request whose wait plus estimated run time reaches max_latency_ms. The real service never sheds
# (requests queue until the 60 s traffic timeout), and wrk counts a quick 503 as a served request, so the
# deadline here is the same 60 s: BentoML decides the batches, and nothing is dropped that the real service
# would have answered.
MAX_LATENCY_MS = int(os.environ.get("BATCHABLE_MAX_LATENCY_MS", "60000"))


class Row(BaseModel):
    """What ``infer`` returns per text; BentoML splits the batch's list of these back per caller."""

    logits: list[float]
    truncated: bool




@bentoml.service(
    name="batchable",
    workers=1,  # as the real service by default: one process, one ONNX Runtime session using every core
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    tracing={"excluded_urls": ["/classify", "/infer"]},
    # The self-call's client (BentoML 1.4.39, _bentoml_impl/client/proxy2.SessionManager) replaces its session
    # every max_requests calls or max_age seconds and closes the old one with calls still in flight: under
    # concurrent load each refresh fails every call queued in the dispatcher (500, "Server disconnected"; 80
    # of 866 requests at 16 concurrent). The connection is in process, nothing to refresh: never.
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class Batchable:
    def __init__(self) -> None:
        registry = Registry(REGISTRY)
        version = VERSION or registry.production()
        if version is None:
            raise RuntimeError(f"no BATCHABLE_VERSION and no production version in {REGISTRY}")
        self.served = load_served_model(registry, version, SERVING)
        self.labels = self.served.labels
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # texts per batch → batches
        self._counts_lock = threading.Lock()
        log.info("batchable: serving %s %s (%s, %s); max_batch_size=%d max_latency_ms=%d",
                 self.served.model_name, version, self.served.provider, self.served.precision,
                 MAX_BATCH, MAX_LATENCY_MS)

    @bentoml.on_shutdown
    def report(self) -> None:
        with self._counts_lock:
            sizes = dict(sorted(self.batch_sizes.items()))
        batches = sum(sizes.values())
        texts = sum(size * n for size, n in sizes.items())
        log.info("batchable: %d batches, %d texts, %.2f texts per batch; batches by size: %s",
                 batches, texts, texts / batches if batches else 0.0, sizes)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH,
                 max_latency_ms=MAX_LATENCY_MS)
    def infer(self, texts: list[str]) -> list[Row]:
        """The texts of every request BentoML merged into this batch, in one list; rows in the same order.

        Sync on purpose: BentoML runs it in a worker thread (the service's ``threads``, 1), off the event
        loop. The body is the micro-batcher's: tokenise once, pad per length bucket, one run per bucket."""
        clf = self.served.classifier
        tokens = clf.tokenize(texts)
        logits = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for run in clf.run_buckets(tokens, MAX_BATCH, SERVING.bucket_run_overhead_tokens):
            logits[run.rows] = run.logits
        with self._counts_lock:
            self.batch_sizes[len(texts)] += 1
        if LOG_BATCHES:
            log.info("batchable: batch of %d texts", len(texts))
        return [Row(logits=row.tolist(), truncated=cut) for row, cut in zip(logits, tokens.truncated)]

    @bentoml.api(route="/classify")
    async def classify(self, texts: list[str]) -> ClassifyResponse:
        """The real service's /classify: the same body, the same answer."""
        if not texts:
            empty = {"error": "'texts' is empty: send at least one text"}
            return JSONResponse(empty, status_code=400)  # type: ignore[return-value]
        # Through BentoML's self-proxy (its app, in process), so that the call reaches the dispatcher.
        # to_async: infer is sync, so self.infer(...) would take the proxy's sync client and block the loop.
        rows: list[Row] = await self.to_async.infer(texts)  # type: ignore[attr-defined]
        probabilities = softmax(np.asarray([row.logits for row in rows]))
        best = probabilities.argmax(axis=1)
        predictions = [
            PredictionOut(request_id=uuid.uuid4().hex, label=self.labels[k], score=float(probabilities[i, k]),
                          probabilities={name: float(p) for name, p in zip(self.labels, probabilities[i])},
                          truncated=rows[i].truncated)
            for i, k in enumerate(best)
        ]
        return ClassifyResponse(model_name=self.served.model_name, model_version=self.served.version,
                                predictions=predictions)
