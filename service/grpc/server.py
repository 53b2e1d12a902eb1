"""``inference.GRPCInferenceService`` (Open Inference Protocol v2) over the DataPlane, on grpcio.

BentoML's new SDK serves no gRPC, so this server runs beside it in each worker process; grpcio's
SO_REUSEPORT lets every worker bind the same port and the kernel spreads connections over them.
It is grpc.aio on an event loop of its own thread: a call awaits the shared micro-batcher (gRPC and
HTTP requests land in the same batches) instead of blocking one of a pool of threads, which capped the
calls in flight at the pool's size (measured: +6% requests/s and less CPU per call at concurrency 32,
bench/RESULTS.md).

Overload is refused as on HTTP: a message over ``serving.max_body_bytes`` gets RESOURCE_EXHAUSTED from grpcio
before it is decoded, a full batcher queue RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms``, and a call
cancelled or past its deadline is cancelled in the batcher's queue too, so the model never runs it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message

import tuneloop
from service import oip
from service.batching import BatchLimits
from service.dataplane import DataPlane, track_request
from service.errors import ServiceError
from service.grpc import codec
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.oip import model_metadata, server_metadata

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)
Ctx = grpc.aio.ServicerContext

# The longest a call waits for its batch; a client deadline shortens it.
INFER_TIMEOUT_S = 60.0


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.plane = dataplane

    # ------------------------------------------------------------------ health
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Ctx) -> pb.ServerLiveResponse:
        return await _answer("ServerLive", context, lambda: pb.ServerLiveResponse(live=self.plane.live))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Ctx) -> pb.ServerReadyResponse:
        return await _answer("ServerReady", context, lambda: pb.ServerReadyResponse(ready=self.plane.ready))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Ctx) -> pb.ModelReadyResponse:
        def ready() -> pb.ModelReadyResponse:
            if not self.plane.ready:
                # The protocol's answer to "is it ready?" is ready=false, not an error; with nothing
                # loaded the name cannot be checked either.
                return pb.ModelReadyResponse(ready=False)
            self.plane.model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=True)

        return await _answer("ModelReady", context, ready)

    # ------------------------------------------------------------------ metadata
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Ctx) -> pb.ServerMetadataResponse:
        return await _answer("ServerMetadata", context,
                       lambda: pb.ServerMetadataResponse(**server_metadata(tuneloop.__version__)))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Ctx) -> pb.ModelMetadataResponse:
        def metadata() -> pb.ModelMetadataResponse:
            meta = model_metadata(self.plane.model(request.name, request.version or None))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            # The protocol's gRPC message has no "parameters" (labels, provider): REST carries those.
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]],
            )

        return await _answer("ModelMetadata", context, metadata)

    # ------------------------------------------------------------------ inference
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Ctx) -> pb.ModelInferResponse:
        return await _answer("ModelInfer", context, lambda: self._infer(request, context))

    async def _infer(self, request: pb.ModelInferRequest, context: Ctx) -> pb.ModelInferResponse:
        version = request.model_version or None  # proto3: "" means "whichever is served"
        inputs = codec.input_tensors(request)
        requested = [o.name for o in request.outputs] or None
        answer = await asyncio.wait_for(oip.infer(self.plane, request.model_name, version, inputs, requested),
                                        timeout=_timeout(context))
        return codec.infer_response(answer.model_name, answer.model_version, request.id, answer.outputs,
                                    raw=bool(request.raw_input_contents))


def _timeout(context: Ctx) -> float:
    remaining = context.time_remaining()
    return INFER_TIMEOUT_S if remaining is None else max(0.0, min(INFER_TIMEOUT_S, remaining))


async def _answer(method: str, context: Ctx, work: Callable[[], R | Awaitable[R]]) -> R:
    """Run one RPC: count it under ``grpc:<method>`` with its gRPC code, and turn every failure into
    a status with a message. Nothing escapes to grpcio, whose fallback is a bare UNKNOWN."""
    code, details, trailers = grpc.StatusCode.OK, "", ()
    with track_request(f"grpc:{method}", cancelled="CANCELLED") as outcome:
        try:
            response = work()
            if inspect.isawaitable(response):
                response = await response
        except ServiceError as exc:
            code, details = grpc.StatusCode[exc.grpc_code], exc.message
            if exc.retry_after_s is not None:  # honoured by gRPC's own retry policy (gRFC A6)
                trailers = (("grpc-retry-pushback-ms", str(exc.retry_after_s * 1000)),)
        except (TimeoutError, asyncio.TimeoutError):
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "no answer from the model within the deadline"
        except Exception as exc:
            log.exception("gRPC %s failed", method)
            code, details = grpc.StatusCode.INTERNAL, (f"internal error ({type(exc).__name__}); "
                                                      "see the server log")
        outcome["status"] = code.name
    if code is not grpc.StatusCode.OK:
        # Outside track_request: abort raises (grpc.aio ends the call with this status), and
        # track_request would count that as a 500.
        await context.abort(code, details, trailers)
    return response


def max_concurrent_rpcs(limits: BatchLimits) -> int:
    """Calls grpcio lets in at once; past it it answers RESOURCE_EXHAUSTED before any Python runs. Every
    admitted ModelInfer call holds at least one text in the batcher's queue or in the running batch, so no
    more than ``max_queue_texts + max_batch_size`` of them wait on the model; the limit is twice that, so
    the queue refuses the excess first, with a reason and a count, and grpcio only a flood beyond it."""
    return 2 * (limits.max_queue_texts + limits.max_batch_texts)


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # a bare IPv6 address such as "::"
        host = f"[{host}]"
    return f"{host}:{port}"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, as under BentoML's uvicorn: 5–15% less CPU per call than asyncio's own
    loop, measured side by side (bench/RESULTS.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GrpcServer:
    """A grpc.aio server on an event loop of its own thread, driven from synchronous code."""

    def __init__(self, dataplane: DataPlane, address: str) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tuneloop-grpc", daemon=True)
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._start(dataplane, address), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    @staticmethod
    async def _start(dataplane: DataPlane, address: str) -> grpc.aio.Server:
        settings = dataplane.settings
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", settings.max_body_bytes)],
            maximum_concurrent_rpcs=max_concurrent_rpcs(dataplane.batcher.limits),
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # newer grpcio raises; older ones return 0
            raise OSError(f"cannot bind the gRPC server to {address}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot bind the gRPC server to {address}")
        await server.start()
        return server

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls, let running ones finish for up to ``grace`` seconds; the event is set once stopped."""
        stopped = threading.Event()

        def finished(_: object) -> None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            stopped.set()

        asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).add_done_callback(finished)
        return stopped


def start_grpc_server(dataplane: DataPlane, port: int, host: str = "127.0.0.1") -> GrpcServer:
    """Serve OIP v2 on ``host:port`` ("0.0.0.0", "::" or "[::]" for every interface) and return the
    started server; ``server.stop(grace)`` refuses new calls and lets running ones finish."""
    return GrpcServer(dataplane, _address(host, port))
