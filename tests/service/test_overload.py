"""Overload is refused early, not queued forever: a full queue answers 503 / RESOURCE_EXHAUSTED at once, and a
request whose client gave up is dropped before the model runs it. Deterministic: the data planes here are not
started until a test has filled their queue, so nothing depends on how fast this machine is."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from service import http_app
from service.content_type import BodyLimit
from service.dataplane import DataPlane
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.server import start_grpc_server
from tests.waiting import wait_for
from tuneloop.events.broker import free_port

WAIT_S = 30.0  # how long a test waits for a condition before failing; never a measured duration


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def texts_run(plane: DataPlane) -> float:
    """Texts the session has run so far (every run observes its size)."""
    return sample("tuneloop_batch_size_sum", {"model_version": plane.manager.current.version})


def paused_plane(dataplane: DataPlane, **settings: Any) -> DataPlane:
    """A data plane on the session's loaded model whose batcher is not started: requests wait in its queue."""
    return DataPlane(dataplane.manager, dataplane.settings.model_copy(update=settings))


def wait_until(condition: Callable[[], bool]) -> None:
    assert wait_for(condition, WAIT_S, interval=0.01), "condition not reached"


async def async_wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def within(work: Awaitable[Any]) -> Any:
    """Run ``work`` on a fresh event loop, within WAIT_S: a request in an unbounded queue waits forever."""
    return asyncio.run(asyncio.wait_for(work, WAIT_S))


# ---------------------------------------------------------------------------------------------- data plane


def test_cancelling_the_caller_drops_its_queued_request(dataplane: DataPlane) -> None:
    """Cancelling the awaiting coroutine reaches the batcher's future: the model never runs the request."""
    plane = paused_plane(dataplane)

    async def scenario() -> None:
        waiting = asyncio.create_task(plane.classify(["cancel me", "and me"]))
        await async_wait_until(lambda: plane.batcher.queued_texts == 2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        before, dropped = texts_run(plane), sample("tuneloop_requests_dropped_total")
        plane.start()
        assert len((await plane.classify(["kept"])).predictions) == 1
        assert texts_run(plane) - before == 1
        assert sample("tuneloop_requests_dropped_total") == dropped + 1

    try:
        within(scenario())
    finally:
        plane.stop()


# ----------------------------------------------------------------------------------------- HTTP, in process


@pytest.fixture
def served_by(dataplane: DataPlane) -> Iterator[Callable[[DataPlane], None]]:
    """Point the HTTP app at another data plane for one test."""
    state = http_app.app.state
    saved = state.dataplane if hasattr(state, "dataplane") else None, getattr(state, "events", None)

    def use(plane: DataPlane) -> None:
        state.dataplane, state.events = plane, None

    yield use
    state.dataplane, state.events = saved


CLASSIFY = ("/classify", {"texts": ["fine"]})
INFER = ("/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                    "data": ["fine"]}]})


@pytest.mark.parametrize(("path", "body"), [CLASSIFY, INFER], ids=["classify", "infer"])
def test_a_full_queue_is_a_503_with_retry_after(dataplane: DataPlane, served_by, path: str,
                                                 body: dict) -> None:
    plane = paused_plane(dataplane, max_queue_texts=1, retry_after_s=3)
    served_by(plane)
    route = "/classify" if path == "/classify" else "/v2/models/{name}/infer"

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=http_app.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = asyncio.create_task(client.post(path, json=body))
            await async_wait_until(lambda: plane.batcher.queued_texts == 1)
            counted = sample("tuneloop_requests_total", {"route": route, "status": "503"})
            refused = await client.post(path, json=body)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "3"
            assert "texts are waiting for the model" in refused.json()["error"]
            assert sample("tuneloop_requests_total", {"route": route, "status": "503"}) == counted + 1
            plane.start()
            assert (await first).status_code == 200

    try:
        within(scenario())
    finally:
        plane.stop()


def asgi_post(path: str, body: bytes,
              disconnect: asyncio.Event) -> tuple[dict, Callable, Callable, list[dict]]:
    """An ASGI request whose client sends ``body``, then disconnects once ``disconnect`` is set."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3000)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    return scope, receive, send, sent


@pytest.mark.parametrize(("path", "body"), [CLASSIFY, INFER], ids=["classify", "infer"])
def test_a_client_that_disconnects_is_never_run(dataplane: DataPlane, served_by, path: str,
                                                body: dict) -> None:
    # Disconnects are watched for while the queue holds a batch or more (below that the request runs soon
    # anyway, and watching costs a task a request): a text already queued and batches of one make it so.
    plane = paused_plane(dataplane, max_batch_size=1)
    served_by(plane)
    route = "/classify" if path == "/classify" else "/v2/models/{name}/infer"

    async def scenario() -> None:
        ahead = plane.batcher.submit(["queued ahead"])
        disconnect = asyncio.Event()
        scope, receive, send, sent = asgi_post(path, json.dumps(body).encode(), disconnect)
        request = asyncio.create_task(http_app.app(scope, receive, send))
        await async_wait_until(lambda: plane.batcher.queued_texts == 2)
        counted = sample("tuneloop_requests_total", {"route": route, "status": "499"})
        disconnect.set()
        await request  # the handler returns, rather than waiting for a batch nobody will read
        assert sent[0]["status"] == 499
        assert sample("tuneloop_requests_total", {"route": route, "status": "499"}) == counted + 1
        before, dropped = texts_run(plane), sample("tuneloop_requests_dropped_total")
        plane.start()
        assert len((await plane.classify(["kept"])).predictions) == 1
        assert len(ahead.result(timeout=0).probabilities) == 1
        assert texts_run(plane) - before == 2  # the text ahead and the kept one, not the disconnected one
        assert sample("tuneloop_requests_dropped_total") == dropped + 1

    try:
        within(scenario())
    finally:
        plane.stop()


# ---------------------------------------------------------------------------------------------- body limit


class Recorder:
    """An ASGI app that reads the whole body, then answers 200; records what it was given."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.after_body: list[dict] = []

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        self.bodies.append(body)
        self.after_body.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app: Callable, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[list[dict], int]:
    """Send ``chunks`` as the body; returns the messages sent back and how many chunks were read."""
    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": headers}
    last = len(chunks) - 1
    left = [{"type": "http.request", "body": c, "more_body": i < last} for i, c in enumerate(chunks)]
    left.reverse()
    sent: list[dict] = []

    async def receive() -> dict:
        return left.pop() if left else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, len(chunks) - len(left)


def test_body_limit_refuses_a_content_length_over_it_without_reading() -> None:
    inner = Recorder()
    rejected = sample("tuneloop_requests_rejected_total", {"reason": "body_too_large"})
    sent, read = call(BodyLimit(inner, max_bytes=1024), [(b"content-length", b"1025")], [b"x" * 1025])
    assert (sent[0]["status"], read, inner.bodies) == (413, 0, [])
    assert (b"connection", b"close") in sent[0]["headers"]
    assert "1025 bytes, over the limit of 1024 bytes" in json.loads(sent[1]["body"])["error"]
    assert sample("tuneloop_requests_rejected_total", {"reason": "body_too_large"}) == rejected + 1


def test_body_limit_stops_reading_a_chunked_body_once_past_it() -> None:
    inner = Recorder()
    sent, read = call(BodyLimit(inner, max_bytes=1024), [], [b"x" * 500] * 5)
    assert (sent[0]["status"], read, inner.bodies) == (413, 3, [])
    assert "more bytes than the limit of 1024 bytes" in json.loads(sent[1]["body"])["error"]


def test_body_limit_passes_bodies_within_it() -> None:
    inner = Recorder()
    sent, _ = call(BodyLimit(inner, max_bytes=1024), [], [b"a" * 512, b"b" * 512])  # chunked, at the limit
    assert sent[0]["status"] == 200
    assert inner.bodies == [b"a" * 512 + b"b" * 512]
    assert inner.after_body == [{"type": "http.disconnect"}]  # the connection's own messages come after
    sent, _ = call(BodyLimit(inner, max_bytes=1024), [(b"content-length", b"1024")], [b"c" * 1024])
    assert sent[0]["status"] == 200 and inner.bodies[-1] == b"c" * 1024


# ---------------------------------------------------------------------------------------------- gRPC


def infer_request(texts: list[str]) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return pb.ModelInferRequest(model_name="sentiment", inputs=[tensor])


@pytest.fixture
def grpc_server() -> Iterator[Callable[[DataPlane], pb_grpc.GRPCInferenceServiceStub]]:
    """Start a gRPC server over a given data plane; returns a stub for it."""
    servers, channels = [], []

    def serve(plane: DataPlane) -> pb_grpc.GRPCInferenceServiceStub:
        port = free_port()
        servers.append(start_grpc_server(plane, port))
        channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        return pb_grpc.GRPCInferenceServiceStub(channels[-1])

    yield serve
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace=None).wait(WAIT_S)


def grpc_count(code: str) -> float:
    return sample("tuneloop_requests_total", {"route": "grpc:ModelInfer", "status": code})


def test_grpc_full_queue_is_resource_exhausted_with_pushback(dataplane: DataPlane, grpc_server) -> None:
    plane = paused_plane(dataplane, max_queue_texts=1)
    stub = grpc_server(plane)
    try:
        first = stub.ModelInfer.future(infer_request(["fine"]), timeout=WAIT_S)
        wait_until(lambda: plane.batcher.queued_texts == 1)
        counted = grpc_count("RESOURCE_EXHAUSTED")
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(infer_request(["fine"]), timeout=10)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert "texts are waiting for the model" in refused.value.details()
        assert ("grpc-retry-pushback-ms", "1000") in tuple(refused.value.trailing_metadata() or ())
        assert grpc_count("RESOURCE_EXHAUSTED") == counted + 1
        plane.start()
        assert first.result().model_version == "v1"
    finally:
        plane.stop()


def test_grpc_call_past_its_deadline_is_never_run(dataplane: DataPlane, grpc_server) -> None:
    plane = paused_plane(dataplane)
    stub = grpc_server(plane)
    try:
        ended = grpc_count("DEADLINE_EXCEEDED") + grpc_count("CANCELLED")
        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(infer_request(["too late", "for this"]), timeout=0.5)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # The server has given the call up (its own timeout, or grpcio's cancellation): counted, and dropped.
        wait_until(lambda: grpc_count("DEADLINE_EXCEEDED") + grpc_count("CANCELLED") > ended)
        before, dropped = texts_run(plane), sample("tuneloop_requests_dropped_total")
        plane.start()
        assert stub.ModelInfer(infer_request(["kept"]), timeout=WAIT_S).model_version == "v1"
        assert texts_run(plane) - before == 1
        assert sample("tuneloop_requests_dropped_total") == dropped + 1
    finally:
        plane.stop()


def test_grpc_message_over_the_body_limit_is_resource_exhausted(dataplane: DataPlane, grpc_server) -> None:
    """grpcio's receive limit is serving.max_body_bytes, as HTTP's body limit."""
    stub = grpc_server(paused_plane(dataplane, max_body_bytes=64 * 1024))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(infer_request(["x" * 100 * 1024]), timeout=WAIT_S)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
