"""KServe's own OIP v2 Python clients (kserve 0.21) against a real ``tuneloop serve``, over gRPC and REST.

kserve can't share .venv: it pins cloudevents<2 (our event log is on cloudevents 2), protobuf<7, psutil<6
and python-dateutil<3. ``make setup`` puts it with --no-deps into .venv/kserve-client, next to cloudevents 1
and orjson, the only packages its client modules need that .venv lacks or has at another major version.
The client runs in a child interpreter (this module run with ``-m``) that has that folder first on
PYTHONPATH, so cloudevents 1 never meets the suite's cloudevents 2. It reports what KServe's client returned
as JSON, and the tests here assert on that.

``import kserve`` runs kserve/__init__.py, which loads KServe's model server and its Kubernetes API client
(kubernetes and its dependency chain, which the client doesn't use). The child registers ``kserve`` as a
bare package instead, so ``kserve.inference_client`` and ``kserve.protocol`` import without that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import AMAZON, ROOT, read_sentences
from tests.server_process import ServerProcess
from tests.service.conftest import classify_columns

KSERVE_CLIENT = Path(sys.prefix) / "kserve-client"  # .venv/kserve-client, installed by `make setup`
MODEL = "sentiment"

if __name__ != "__main__" and not (KSERVE_CLIENT / "kserve" / "inference_client.py").exists():
    # A failure, not a skip: `make test` installs it, and a skip would hide a broken setup.
    pytest.fail(f"KServe's client is not installed in {KSERVE_CLIENT}: run `make setup`", pytrace=False)


# ------------------------------------------------------------------------ fixtures (this process)


@pytest.fixture(scope="module")
def server(served_registry: Path, tmp_path_factory: pytest.TempPathFactory):
    with ServerProcess(served_registry, tmp_path_factory.mktemp("logs") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [text for text, _ in read_sentences(AMAZON)[:8]]


@pytest.fixture(scope="module")
def kserve(server: ServerProcess, texts: list[str]) -> dict:
    """What KServe's clients got from the server, from the child interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(KSERVE_CLIENT),
                                                                     os.environ.get("PYTHONPATH")]))}
    request = {"grpc": f"127.0.0.1:{server.grpc_port}", "rest": server.url, "texts": texts}
    child = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(request), capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=300)
    assert child.returncode == 0, child.stderr[-5000:]
    return json.loads(child.stdout.splitlines()[-1])  # the answer is its last line


@pytest.fixture(scope="module")
def classified(server: ServerProcess, texts: list[str]) -> tuple[list[str], np.ndarray]:
    return classify_columns(server.url, MODEL, texts)


def ok(result: dict) -> dict:
    assert "error" not in result, result["error"]
    return result


def assert_agrees_with_classify(response: dict, classified: tuple[list[str], np.ndarray], n: int) -> None:
    labels, probabilities = classified
    outputs = response["outputs"]
    assert set(outputs) == {"probabilities", "label", "request_id"}
    probs = outputs["probabilities"]
    assert (probs["datatype"], probs["shape"], probs["numpy_dtype"]) == ("FP32", [n, 2], "float32")
    np.testing.assert_allclose(np.array(probs["data"], dtype=np.float32), probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.sum(probs["data"], axis=1), 1.0, atol=1e-5)
    assert (outputs["label"]["datatype"], outputs["label"]["shape"]) == ("BYTES", [n])
    assert outputs["label"]["data"] == labels
    request_ids = outputs["request_id"]["data"]
    assert len(set(request_ids)) == n and all(len(r) == 32 for r in request_ids)


# ------------------------------------------------------------------------ gRPC: kserve.InferenceGRPCClient


def test_kserve_grpc_health(kserve: dict) -> None:
    grpc = ok(kserve["grpc"])
    assert (grpc["live"], grpc["ready"], grpc["model_ready"]) == (True, True, True)
    assert grpc["unknown_model_ready"] == "NOT_FOUND"


def test_kserve_grpc_metadata(kserve: dict) -> None:
    """KServe's client has no metadata calls; KServe's own generated stub and messages read ours."""
    grpc = ok(kserve["grpc"])
    assert grpc["server_metadata"]["name"] == "tuneloop"
    assert "model_repository_health" in grpc["server_metadata"]["extensions"]
    meta = grpc["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == (MODEL, ["v1"], "onnxruntime_onnx")
    assert meta["inputs"] == [["text", "BYTES", [-1]]]
    assert meta["outputs"] == [["probabilities", "FP32", [-1, 2]], ["label", "BYTES", [-1]],
                               ["request_id", "BYTES", [-1]]]


@pytest.mark.parametrize("encoding", ["raw", "typed"])
def test_kserve_grpc_infer_agrees_with_classify(kserve: dict, classified, texts: list[str],
                                                encoding: str) -> None:
    """``raw``: set_data_from_numpy, sent as raw_input_contents; ``typed``: a list, sent as bytes_contents."""
    response = ok(kserve["grpc"])["infer"][encoding]
    assert response["model_name"] == MODEL and response["model_version"] == "v1"
    assert response["id"] == f"kserve-{encoding}"
    assert_agrees_with_classify(response, classified, len(texts))


def test_kserve_grpc_requested_output_only(kserve: dict) -> None:
    assert list(ok(kserve["grpc"])["infer"]["label-only"]["outputs"]) == ["label"]


# ------------------------------------------------------------------------ REST: kserve.InferenceRESTClient


def test_kserve_rest_health(kserve: dict) -> None:
    rest = ok(kserve["rest"])
    assert (rest["live"], rest["ready"], rest["model_ready"]) == (True, True, True)
    assert rest["unknown_model_ready"] is False


def test_kserve_rest_json_fits_kserves_data_models(kserve: dict, texts: list[str]) -> None:
    """KServe's REST client has no metadata calls; our JSON validates against KServe's own pydantic models."""
    rest = ok(kserve["rest"])
    assert rest["server_metadata"]["name"] == "tuneloop"
    assert "binary_tensor_data" in rest["server_metadata"]["extensions"]
    meta = rest["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == (MODEL, ["v1"], "onnxruntime_onnx")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    inferred = rest["infer_response"]
    assert (inferred["model_name"], inferred["model_version"]) == (MODEL, "v1")
    assert inferred["id"] == "kserve-model"
    assert rest["anonymous_infer_response"]["id"]  # no id sent: the server names the response itself
    assert [(o["name"], o["datatype"], o["shape"]) for o in inferred["outputs"]] == [
        ("probabilities", "FP32", [len(texts), 2]), ("label", "BYTES", [len(texts)]),
        ("request_id", "BYTES", [len(texts)])]


@pytest.mark.parametrize("encoding", ["list", "numpy-json"])
def test_kserve_rest_infer_agrees_with_classify(kserve: dict, classified, texts: list[str],
                                                encoding: str) -> None:
    """``list``: data given as a list; ``numpy-json``: set_data_from_numpy(binary_data=False); JSON both
    (the binary encoding: test_kserve_rest_binary_tensors_agree_with_classify)."""
    response = ok(kserve["rest"])["infer"][encoding]
    # KServe's InferResponse.from_bytes drops model_version; the id is the one KServe's client sent.
    assert (response["model_name"], response["id"]) == (MODEL, f"kserve-{encoding}")
    assert_agrees_with_classify(response, classified, len(texts))


@pytest.mark.parametrize("encoding", ["binary", "binary-outputs"])
def test_kserve_rest_binary_tensors_agree_with_classify(kserve: dict, classified, texts: list[str],
                                                        encoding: str) -> None:
    """KServe's default set_data_from_numpy(binary_data=True) uses the binary tensor data extension: a JSON
    header then the texts' raw bytes, as application/octet-stream. ``binary``: JSON outputs (KServe asks for
    none in binary); ``binary-outputs``: the request's binary_data_output, answered in binary, which KServe's
    InferResponse.from_bytes reads."""
    response = ok(kserve["rest"])["infer"][encoding]
    assert (response["model_name"], response["id"]) == (MODEL, f"kserve-{encoding}")
    assert_agrees_with_classify(response, classified, len(texts))
    headers = response["headers"]
    if encoding == "binary":
        assert headers["content-type"] == "application/json"
        assert "inference-header-content-length" not in headers
    else:
        assert headers["content-type"] == "application/octet-stream"
        assert 0 < int(headers["inference-header-content-length"]) < int(headers["content-length"])


# ------------------------------------------------------------------------ the child: KServe's client itself


def _import_kserve_as_bare_package() -> None:
    import importlib.util
    import types

    spec = importlib.util.find_spec("kserve")
    assert spec is not None and spec.submodule_search_locations, f"kserve not on {sys.path}"
    package = types.ModuleType("kserve")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["kserve"] = package


def _response(response) -> dict:
    """A KServe InferResponse as plain JSON, its tensors decoded by KServe's own as_numpy()."""
    outputs = {}
    for output in response.outputs:
        array = output.as_numpy()
        data = [x.decode() if isinstance(x, bytes) else x for x in array.tolist()] \
            if output.datatype == "BYTES" else array.tolist()
        outputs[output.name] = {"datatype": output.datatype, "shape": list(output.shape), "data": data,
                                "numpy_dtype": str(array.dtype)}
    return {"model_name": response.model_name, "model_version": response.model_version, "id": response.id,
            "outputs": outputs}


async def _grpc_calls(target: str, texts: list[str]) -> dict:
    import grpc

    from kserve.inference_client import InferenceGRPCClient
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    result: dict = {}
    async with InferenceGRPCClient(target, timeout=60) as client:
        result["live"] = await client.is_server_live()
        result["ready"] = await client.is_server_ready()
        result["model_ready"] = await client.is_model_ready(MODEL)
        try:
            result["unknown_model_ready"] = await client.is_model_ready("nope")
        except grpc.RpcError as error:
            result["unknown_model_ready"] = error.code().name

        raw = InferInput("text", [len(texts)], "BYTES")
        raw.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        typed = InferInput("text", [len(texts), 1], "BYTES", data=list(texts))
        result["infer"] = {}
        for encoding, tensor in [("raw", raw), ("typed", typed)]:
            response = await client.infer(InferRequest(MODEL, [tensor], request_id=f"kserve-{encoding}"))
            result["infer"][encoding] = _response(response)
        label_only = InferRequest(MODEL, [InferInput("text", [2], "BYTES", data=texts[:2])],
                                  request_outputs=[RequestedOutput("label")])
        result["infer"]["label-only"] = _response(await client.infer(label_only))

    async with grpc.aio.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        server = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=60)
        result["server_metadata"] = {"name": server.name, "version": server.version,
                                     "extensions": list(server.extensions)}
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=60)
        result["model_metadata"] = {
            "name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in meta.outputs],
        }
    return result


async def _rest_calls(base_url: str, texts: list[str]) -> dict:
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest
    from kserve.protocol.rest.v2_datamodels import (InferenceResponse, ModelMetadataResponse,
                                                    ServerMetadataResponse)

    result: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        result["live"] = await client.is_server_live(base_url)
        result["ready"] = await client.is_server_ready(base_url)
        result["model_ready"] = await client.is_model_ready(base_url, MODEL)
        result["unknown_model_ready"] = await client.is_model_ready(base_url, "nope")

        listed = InferInput("text", [len(texts)], "BYTES", data=list(texts))
        numpy_json = InferInput("text", [len(texts), 1], "BYTES")
        numpy_json.set_data_from_numpy(np.array([[t] for t in texts], dtype=np.object_), binary_data=False)
        result["infer"] = {}
        for encoding, tensor in [("list", listed), ("numpy-json", numpy_json)]:
            request = InferRequest(MODEL, [tensor], request_id=f"kserve-{encoding}")
            response = await client.infer(base_url, request, model_name=MODEL)
            result["infer"][encoding] = _response(response)

        # The binary tensor data extension: set_data_from_numpy's default, binary_data=True.
        for encoding, parameters in [("binary", None), ("binary-outputs", {"binary_data_output": True})]:
            binary = InferInput("text", [len(texts)], "BYTES")
            binary.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
            request = InferRequest(MODEL, [binary], request_id=f"kserve-{encoding}", parameters=parameters)
            headers: dict = {}
            response = await client.infer(base_url, request, model_name=MODEL, response_headers=headers)
            headers = {k.lower(): v for k, v in headers.items()}
            result["infer"][encoding] = _response(response) | {"headers": headers}

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        server = ServerMetadataResponse.model_validate((await http.get("/v2")).raise_for_status().json())
        meta = (await http.get(f"/v2/models/{MODEL}")).raise_for_status().json()
        meta = ModelMetadataResponse.model_validate(meta)
        body = {"id": "kserve-model", "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                                  "data": texts}]}
        inferred = (await http.post(f"/v2/models/{MODEL}/infer", json=body)).raise_for_status().json()
        inferred = InferenceResponse.model_validate(inferred)
        del body["id"]  # the protocol's request id is optional; KServe's model still wants one in the answer
        anonymous = (await http.post(f"/v2/models/{MODEL}/infer", json=body)).raise_for_status().json()
        anonymous = InferenceResponse.model_validate(anonymous)
    result["server_metadata"] = server.model_dump()
    result["model_metadata"] = meta.model_dump()
    result["infer_response"] = inferred.model_dump()
    result["anonymous_infer_response"] = anonymous.model_dump()
    return result


async def _child(request: dict) -> dict:
    import traceback

    answers = {}
    for transport, calls in [("grpc", _grpc_calls), ("rest", _rest_calls)]:
        try:
            answers[transport] = await calls(request[transport], request["texts"])
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            answers[transport] = {"error": traceback.format_exc()}
    return answers


if __name__ == "__main__":
    import asyncio

    _import_kserve_as_bare_package()
    print(json.dumps(asyncio.run(_child(json.load(sys.stdin)))))
