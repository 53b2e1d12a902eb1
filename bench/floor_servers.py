"""The floor of each serving stack, for bench/bench_frontend.py: servers that parse the service's requests and
answer in its shapes, with nothing between: no model, no batcher, no metrics, no validation beyond parsing.

    uvicorn bench.floor_servers:http_app --port P        bare Starlette: POST /classify, POST /v2/models/{name}/infer
    bentoml serve bench.floor_servers:BentoFloor          the same app mounted in BentoML, as the service mounts its own
    python -m bench.floor_servers grpc --port P          bare grpc.aio servicer: ModelInfer

uvicorn runs with its defaults, uvloop and httptools where installed, as under BentoML. The answers carry a
fixed two-label prediction and a fresh request id, the size of the service's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PROBABILITIES = {"negative": 0.12, "positive": 0.88}


async def classify(request: Request) -> Response:
    texts = json.loads(await request.body())["texts"]
    predictions = [{"request_id": uuid.uuid4().hex, "label": "positive", "score": 0.88,
                    "probabilities": PROBABILITIES, "truncated": False} for _ in texts]
    return Response(json.dumps({"model_name": "sentiment", "model_version": "v1", "predictions": predictions}),
                    media_type="application/json")


async def oip_infer(request: Request) -> Response:
    body = json.loads(await request.body())
    texts = body["inputs"][0]["data"]
    n = len(texts)
    outputs = [
        {"name": "probabilities", "datatype": "FP32", "shape": [n, 2], "data": [0.12, 0.88] * n},
        {"name": "label", "datatype": "BYTES", "shape": [n], "data": ["positive"] * n},
        {"name": "request_id", "datatype": "BYTES", "shape": [n], "data": [uuid.uuid4().hex for _ in texts]},
    ]
    answer = {"model_name": request.path_params["name"], "model_version": "v1", "id": body.get("id") or uuid.uuid4().hex,
              "outputs": outputs}
    return Response(json.dumps(answer), media_type="application/json")


http_app = Starlette(routes=[Route("/classify", classify, methods=["POST"]),
                             Route("/v2/models/{name}/infer", oip_infer, methods=["POST"])])


# BentoML's share: ``http_app`` mounted at the root of a service configured as service/service.py's.
@bentoml.service(name="floor", traffic={"timeout": 60}, metrics={"enabled": False},
                 logging={"access": {"enabled": False}}, tracing={"excluded_urls": ["/classify", "/v2"]})
@bentoml.asgi_app(http_app, path="/")
class BentoFloor:
    def __is_ready__(self) -> bool:
        return True


async def serve_grpc(port: int) -> None:
    import grpc

    from service.grpc import grpc_predict_v2_pb2 as pb
    from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    class Floor(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerReady(self, request: pb.ServerReadyRequest, context: object) -> pb.ServerReadyResponse:  # noqa: N802
            return pb.ServerReadyResponse(ready=True)

        async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:  # noqa: N802
            texts = [b.decode("utf-8") for b in request.inputs[0].contents.bytes_contents]
            n = len(texts)
            response = pb.ModelInferResponse(model_name=request.model_name, model_version="v1",
                                             id=request.id or uuid.uuid4().hex)
            probabilities = response.outputs.add(name="probabilities", datatype="FP32", shape=[n, 2])
            probabilities.contents.fp32_contents.extend([0.12, 0.88] * n)
            label = response.outputs.add(name="label", datatype="BYTES", shape=[n])
            label.contents.bytes_contents.extend([b"positive"] * n)
            ids = response.outputs.add(name="request_id", datatype="BYTES", shape=[n])
            ids.contents.bytes_contents.extend(uuid.uuid4().hex.encode() for _ in texts)
            return response

    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["grpc"])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve_grpc(parser.parse_args().port))


if __name__ == "__main__":
    main()
