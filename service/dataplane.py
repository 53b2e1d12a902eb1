"""The one inference path: validate → micro-batch → ONNX Runtime → labels and probabilities.

HTTP (/classify), the Open Inference Protocol REST routes and gRPC are thin adapters over this
class, the way MLServer's DataPlane serves its REST, gRPC and Kafka servers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service.batching import BatchOutput, MicroBatcher
from service.errors import (ClientDisconnectedError, InvalidInputError, ModelNotFoundError, ModelNotReadyError,
                            ServiceError, TextTooLongError)
from service.metrics import INFLIGHT, REQUEST_DURATION_BY, REQUESTS_BY
from service.model import ServedModel
from service.swap import ModelManager
from tuneloop.settings import ServingSettings


@dataclass(frozen=True)
class Prediction:
    request_id: str
    label: str
    score: float
    probabilities: dict[str, float]
    truncated: bool


@dataclass(frozen=True)
class ClassifyResult:
    model_name: str
    model_version: str
    predictions: list[Prediction]
    probabilities: np.ndarray  # (n, labels), rows in request order
    embeddings: np.ndarray  # (n, dim): logged for the drift monitor, never returned to clients
    latency_ms: float


# Called after every successful classification (the Kafka event log plugs in here); must not block.
PredictionListener = Callable[[list[str], ClassifyResult], None]


class DataPlane:
    def __init__(self, manager: ModelManager, settings: ServingSettings) -> None:
        self.manager = manager
        self.settings = settings
        self.batcher = MicroBatcher(lambda: manager.current, settings)
        self.listeners: list[PredictionListener] = []
        manager.swap_listeners.append(self._on_swap)
        try:
            self.batcher.follow_provider(manager.current.classifier.provider)
        except ModelNotReadyError:
            pass  # nothing loaded yet: the first swap tells

    def _on_swap(self, kind: str, _model_name: str | None, _version: str, _reason: str) -> None:
        if kind == "swap":  # the provider is the one the session got, which may not be the one asked for
            self.batcher.follow_provider(self.manager.current.classifier.provider)

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    # ------------------------------------------------------------------ health and metadata
    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return self.manager.ready

    @property
    def backlogged(self) -> bool:
        """More texts wait than one batch takes: a request queued now waits for whole batches before its
        own, long enough for a client to give up on it."""
        return self.batcher.queued_texts >= self.batcher.limits.max_batch_texts

    def model(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The served model, checked against the name (and version) a caller asked for."""
        served = self.manager.current
        if name is not None and name != served.model_name:
            raise ModelNotFoundError(f"unknown model {name!r}; this server serves {served.model_name!r}")
        if version is not None and version != served.version:
            raise ModelNotFoundError(
                f"model {name!r} version {version!r} is not served; the served version is {served.version!r}"
            )
        return served

    # ------------------------------------------------------------------ classification
    def validate(self, texts: object) -> list[str]:
        if not isinstance(texts, list):
            raise InvalidInputError("'texts' must be a list of strings")
        if not texts:
            raise InvalidInputError("'texts' is empty: send at least one text")
        if len(texts) > self.settings.max_texts:
            raise InvalidInputError(f"{len(texts)} texts in one request; the limit is {self.settings.max_texts}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"texts[{i}] is {type(text).__name__}, not a string")
            if not text.strip():
                raise InvalidInputError(f"texts[{i}] is empty or only whitespace")
            if len(text) > self.settings.max_text_chars:
                raise TextTooLongError(
                    f"texts[{i}] has {len(text)} characters; the limit is {self.settings.max_text_chars}"
                )
        return texts

    def _reject_over_token_limit(self, texts: list[str]) -> None:
        model = self.manager.current
        limit = model.classifier.max_length
        lengths = [len(ids) for ids in model.classifier.tokenizer(texts, truncation=False)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > limit:
                raise TextTooLongError(f"texts[{i}] has {n} tokens; the model reads at most {limit} "
                                       "(the server is set to reject, not truncate, longer texts)")

    async def classify(self, texts: object) -> ClassifyResult:
        """Raises OverloadedError at once when the batcher's queue is full. Cancelling the caller (a gRPC
        deadline, a disconnected HTTP client) cancels the batcher's future too, so a request still queued is
        dropped before the model runs it."""
        checked = self.validate(texts)
        if self.settings.on_too_long == "reject":
            self._reject_over_token_limit(checked)
        started = time.perf_counter()
        return self._finish(checked, await self.batcher.infer(checked), started)

    def _finish(self, texts: list[str], output: BatchOutput, started: float) -> ClassifyResult:
        labels = output.model.labels
        probabilities = output.probabilities
        # Python floats once for the whole array: indexing numpy element by element costs more than the rest.
        predictions = [
            Prediction(request_id=uuid.uuid4().hex, label=labels[k], score=row[k],
                       probabilities=dict(zip(labels, row)), truncated=truncated)
            for k, row, truncated in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist(),
                                         output.truncated)
        ]
        result = ClassifyResult(model_name=output.model.model_name, model_version=output.model.version,
                                predictions=predictions, probabilities=probabilities,
                                embeddings=output.embeddings, latency_ms=(time.perf_counter() - started) * 1000)
        for listener in self.listeners:
            listener(texts, result)
        return result


@contextmanager
def track_request(route: str, cancelled: str = "499") -> Iterator[dict[str, str]]:
    """Count, time and gauge one request; the transport sets ``outcome["status"]`` when it answers.
    A request cancelled on the server's side counts as ``cancelled`` (gRPC: "CANCELLED")."""
    outcome = {"status": "200"}
    INFLIGHT.inc()
    started = time.perf_counter()
    try:
        yield outcome
    except ServiceError as exc:
        outcome["status"] = str(int(exc.status))
        raise
    except asyncio.CancelledError:
        outcome["status"] = cancelled
        raise
    except Exception:
        outcome["status"] = "500"
        raise
    finally:
        INFLIGHT.dec()
        REQUEST_DURATION_BY(route).observe(time.perf_counter() - started)
        REQUESTS_BY(route, outcome["status"]).inc()


T = TypeVar("T")
Receive = Callable[[], Awaitable[Mapping[str, Any]]]  # an ASGI receive


async def until_disconnected(receive: Receive, work: Awaitable[T], *, watch: bool) -> T:
    """``work``'s result, or ClientDisconnectedError once the HTTP client has gone: its wait is cancelled
    then, so a request still in the batcher's queue is dropped before the model runs it. (uvicorn does not
    cancel a request's task when its client goes; grpc.aio does.) Call it after the body has been read: the
    next ASGI message is then the disconnect.

    Watching costs a task a request (~15-60 µs of CPU on the event loop), worth it only where the request
    will wait long enough for its client to give up: ``watch=plane.backlogged``; otherwise ``work`` alone."""
    if not watch:
        return await work
    task = asyncio.current_task()
    assert task is not None
    state = {"gone": False, "done": False}

    def on_message(watcher: asyncio.Future) -> None:
        if state["done"] or watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result()["type"] == "http.disconnect":
            state["gone"] = True
            task.cancel()

    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        # Ours alone (nothing else cancelled the task too): an answer nobody reads, counted as 499.
        if state["gone"] and task.uncancel() == 0:
            raise ClientDisconnectedError("the client disconnected before its answer") from None
        raise
    finally:
        state["done"] = True
        watcher.cancel()
