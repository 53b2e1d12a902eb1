"""The gRPC Open Inference Protocol v2 server, called over a real port by Triton's client and our own stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc  # the dev extra installs it: no skip to hide its absence
from prometheus_client import REGISTRY
from tritonclient.utils import InferenceServerException

from service import oip
from service.dataplane import DataPlane
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.server import start_grpc_server
from service.oip import Tensor
from tests.service.conftest import classify_now, start_dataplane
from tuneloop.events.broker import free_port

TEXTS = ["great phone, love it", "battery died after a day", "works as advertised", "the screen cracked"]


@pytest.fixture(scope="module")
def port(dataplane: DataPlane) -> Iterator[int]:
    port = free_port()
    server = start_grpc_server(dataplane, port)
    yield port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def triton(port: int) -> Iterator[tritonclient_grpc.InferenceServerClient]:
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(port: int) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def texts_input(texts: list[str], shape: list[int] | None = None,
                name: str = "text") -> tritonclient_grpc.InferInput:
    data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_).reshape(shape or [len(texts)])
    tensor = tritonclient_grpc.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def typed_request(texts: list[bytes], shape: list[int] | None = None, **kwargs) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=shape or [len(texts)])
    tensor.contents.bytes_contents.extend(texts)
    return pb.ModelInferRequest(model_name="sentiment", inputs=[tensor], **kwargs)


def raw_request(raw: bytes, shape: list[int], datatype: str = "BYTES", **kwargs) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype=datatype, shape=shape)
    return pb.ModelInferRequest(model_name="sentiment", inputs=[tensor], raw_input_contents=[raw], **kwargs)


def live(channel: grpc.Channel) -> bool:
    return pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10).live


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value


def triton_error(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def requests_counted(method: str, status: str) -> float:
    return REGISTRY.get_sample_value("tuneloop_requests_total",
                                     {"route": f"grpc:{method}", "status": status}) or 0.0


# ---------------------------------------------------------------------------- tritonclient


def test_triton_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("sentiment") and triton.is_model_ready("sentiment", "v1")
    server = triton.get_server_metadata(as_json=True)
    assert server["name"] == "tuneloop" and "model_repository_health" in server["extensions"]
    meta = triton.get_model_metadata("sentiment", as_json=True)
    assert meta["versions"] == ["v1"] and meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("text", "BYTES")]
    outputs = {t["name"]: t for t in meta["outputs"]}
    assert outputs["probabilities"]["datatype"] == "FP32" and outputs["probabilities"]["shape"] == ["-1", "2"]
    assert triton.get_model_metadata("sentiment", "v1").name == "sentiment"


@pytest.mark.parametrize("shape", [[4], [4, 1]])
def test_triton_infer_matches_the_dataplane(triton, dataplane: DataPlane, shape: list[int]) -> None:
    result = triton.infer("sentiment", [texts_input(TEXTS, shape)], request_id="req-7")
    expected = classify_now(dataplane, TEXTS)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 2)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-5)
    assert [x.decode() for x in result.as_numpy("label")] == [p.label for p in expected.predictions]
    request_ids = [x.decode() for x in result.as_numpy("request_id")]
    assert len(set(request_ids)) == 4 and all(len(r) == 32 for r in request_ids)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("sentiment", "v1", "req-7")


def test_triton_requested_outputs_only(triton) -> None:
    outputs = [tritonclient_grpc.InferRequestedOutput("label")]
    result = triton.infer("sentiment", [texts_input(TEXTS[:2])], model_version="v1", outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["label"]
    assert result.as_numpy("label").shape == (2,) and result.as_numpy("probabilities") is None


def test_triton_unknown_model_and_version_are_not_found(triton) -> None:
    for call, args, kwargs in [
        (triton.infer, ("nope", [texts_input(TEXTS[:1])]), {}),
        (triton.infer, ("sentiment", [texts_input(TEXTS[:1])]), {"model_version": "v99"}),
        (triton.get_model_metadata, ("nope",), {}),
        (triton.is_model_ready, ("nope",), {}),
    ]:
        error = triton_error(call, *args, **kwargs)
        assert error.status() == "StatusCode.NOT_FOUND", error
        assert "nope" in error.message() or "v99" in error.message()


def test_triton_wrong_datatype_is_invalid(triton) -> None:
    tensor = tritonclient_grpc.InferInput("text", [2], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    error = triton_error(triton.infer, "sentiment", [tensor])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INT32" in error.message() and "BYTES" in error.message()


def test_triton_element_count_mismatch_is_invalid(triton) -> None:
    tensor = texts_input(TEXTS[:2])
    tensor.set_shape([3])  # the data still holds two elements
    error = triton_error(triton.infer, "sentiment", [tensor])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [3] but 2 elements" in error.message()


def test_triton_bad_shapes_are_invalid(triton) -> None:
    error = triton_error(triton.infer, "sentiment", [texts_input(TEXTS, [2, 2])])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "[n] or [n, 1]" in error.message()


def test_triton_invalid_utf8_is_invalid(triton) -> None:
    tensor = tritonclient_grpc.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"fine", b"\xff\xfe broken"], dtype=np.object_))
    error = triton_error(triton.infer, "sentiment", [tensor])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "element 1 is not valid UTF-8" in error.message()


@pytest.mark.parametrize("text", ["", "   "])
def test_triton_empty_text_is_invalid(triton, text: str) -> None:
    error = triton_error(triton.infer, "sentiment", [texts_input(["fine", text])])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "texts[1] is empty" in error.message()


# ---------------------------------------------------------------------------- our own stub


def test_stub_health_and_metadata(stub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name="sentiment", version="v1")).ready is True
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="sentiment"))
    assert list(meta.outputs[0].shape) == [-1, 2]
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "tuneloop"
    error = rpc_error(stub.ModelReady, pb.ModelReadyRequest(name="sentiment", version="v2"))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_stub_typed_contents_get_typed_outputs(stub, dataplane: DataPlane) -> None:
    response = stub.ModelInfer(typed_request([t.encode() for t in TEXTS], id="abc"), timeout=30)
    assert response.id == "abc" and not response.raw_output_contents
    outputs = {o.name: o for o in response.outputs}
    assert list(outputs["probabilities"].shape) == [4, 2]
    probabilities = np.array(outputs["probabilities"].contents.fp32_contents, dtype=np.float32).reshape(4, 2)
    expected = classify_now(dataplane, TEXTS)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-5)
    labels = [b.decode() for b in outputs["label"].contents.bytes_contents]
    assert labels == [p.label for p in expected.predictions]


def test_stub_raw_contents_get_raw_outputs(stub, dataplane: DataPlane) -> None:
    raw = oip.encode_raw_tensor(Tensor("text", "BYTES", [len(TEXTS)], TEXTS))
    request = raw_request(raw, [4, 1])
    request.outputs.add(name="probabilities")
    request.outputs.add(name="label")
    response = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    assert len(response.raw_output_contents) == 2
    assert not response.outputs[0].HasField("contents")
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(4, 2)
    expected = classify_now(dataplane, TEXTS)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-5)
    labels = oip.decode_bytes_elements(response.raw_output_contents[1], "label")
    assert [b.decode() for b in labels] == [p.label for p in expected.predictions]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (raw_request(b"\x05\x00\x00\x00abc", [1]), "element 0 claims 5 bytes but 3 remain"),
        (raw_request(oip.encode_raw_tensor(Tensor("text", "BYTES", [1], [b"ok"])) + b"\x01\x00", [1]),
         "4-byte length prefix"),
        (raw_request(oip.encode_raw_tensor(Tensor("text", "BYTES", [2], [b"a", b"b"])), [3]), "shape [3] but 2 elements"),
        (raw_request(b"\x00\x00\x80\x3f", [1], datatype="FP32"), "datatype FP32"),
        (typed_request([b"a", b"b"], [3]), "shape [3] but 2 elements"),
        (typed_request([b"\xc3\x28"]), "not valid UTF-8"),
        (typed_request([b"ok"], [-1]), "invalid shape"),
        (typed_request([b"ok"], [1, 1, 1]), "[n] or [n, 1]"),
        (pb.ModelInferRequest(model_name="sentiment"), "exactly one input tensor"),
        (pb.ModelInferRequest(model_name="sentiment", raw_input_contents=[b""]), "1 entries for 0 input(s)"),
        (typed_request([b"ok"], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]),
         "unknown output(s) ['logits']"),
    ],
    ids=["raw-cut-element", "raw-cut-prefix", "raw-count", "fp32", "typed-count", "utf8", "negative-shape",
         "3d", "no-inputs", "raw-without-inputs", "unknown-output"],
)
def test_stub_bad_requests_are_invalid_with_a_reason(stub, request_: pb.ModelInferRequest,
                                                      message: str) -> None:
    error = rpc_error(stub.ModelInfer, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    assert message in error.details()


def test_stub_contents_and_raw_together_are_invalid(stub) -> None:
    request = typed_request([b"ok"])
    request.raw_input_contents.append(oip.encode_raw_tensor(Tensor("text", "BYTES", [1], [b"ok"])))
    error = rpc_error(stub.ModelInfer, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "use one or the other" in error.details()


def test_stub_odd_requests_never_get_unknown(stub) -> None:
    """Odd but well-formed messages get a definite status, never grpcio's fallback UNKNOWN."""
    odd = [
        pb.ModelInferRequest(),
        typed_request([], []),
        typed_request([b"x"] * 1000),
        raw_request(b"", [0]),
        raw_request(b"\xff" * 16, [2], datatype="FP16"),
        typed_request([b"ok"], [2**62, 2**62]),
        pb.ModelInferRequest(model_name="sentiment", inputs=[pb.ModelInferRequest.InferInputTensor()]),
    ]
    for request in odd:
        error = rpc_error(stub.ModelInfer, request)
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (request, error)


def test_requests_are_counted_by_grpc_code(stub) -> None:
    ok, invalid = requests_counted("ModelInfer", "OK"), requests_counted("ModelInfer", "INVALID_ARGUMENT")
    stub.ModelInfer(typed_request([b"fine"]), timeout=30)
    rpc_error(stub.ModelInfer, typed_request([b""]))
    assert requests_counted("ModelInfer", "OK") == ok + 1
    assert requests_counted("ModelInfer", "INVALID_ARGUMENT") == invalid + 1
    before = requests_counted("ModelMetadata", "NOT_FOUND")
    rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))
    assert requests_counted("ModelMetadata", "NOT_FOUND") == before + 1


# ---------------------------------------------------------------------------- server lifecycle


def test_not_ready_server_answers_unavailable(tmp_path: Path) -> None:
    plane = start_dataplane(tmp_path / "empty-registry", load=False)
    port = free_port()
    server = start_grpc_server(plane, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live is True
            assert stub.ServerReady(pb.ServerReadyRequest()).ready is False
            assert stub.ModelReady(pb.ModelReadyRequest(name="sentiment")).ready is False
            for call, request in [(stub.ModelInfer, typed_request([b"fine"])),
                                  (stub.ModelMetadata, pb.ModelMetadataRequest(name="sentiment"))]:
                error = rpc_error(call, request)
                assert error.code() is grpc.StatusCode.UNAVAILABLE, error
    finally:
        server.stop(grace=None)
        plane.stop()


def test_workers_share_one_port_and_stop_gracefully(dataplane: DataPlane) -> None:
    port = free_port()
    first = start_grpc_server(dataplane, port)
    second = start_grpc_server(dataplane, port)  # as a second BentoML worker would: SO_REUSEPORT lets it bind
    try:
        for _ in range(2):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert live(channel)
    finally:
        assert first.stop(grace=5).wait(10) and second.stop(grace=5).wait(10)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        error = rpc_error(pb_grpc.GRPCInferenceServiceStub(channel).ServerLive, pb.ServerLiveRequest())
        assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_ipv6_any_host_is_bracketed(dataplane: DataPlane) -> None:
    port = free_port()
    server = start_grpc_server(dataplane, port, host="::")
    try:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            assert live(channel)
    finally:
        server.stop(grace=None)


# ---------------------------------------------------------------------------- inside `tuneloop serve`


def test_served_process_answers_grpc_like_rest(served_registry: Path, tmp_path: Path) -> None:
    """The real deployment: gRPC started by the BentoML worker beside the REST routes, same answers."""
    import httpx

    from tests.server_process import ServerProcess

    with ServerProcess(served_registry, tmp_path / "server.log") as server:
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            assert client.is_server_ready() and client.is_model_ready("sentiment")
            result = client.infer("sentiment", [texts_input(TEXTS[:2])])
        finally:
            client.close()
        rest = httpx.post(f"{server.url}/v2/models/sentiment/infer", timeout=30, json={
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]}).json()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    outputs = {o["name"]: o for o in rest["outputs"]}
    np.testing.assert_allclose(result.as_numpy("probabilities").reshape(-1), outputs["probabilities"]["data"],
                               atol=1e-5)
    assert [x.decode() for x in result.as_numpy("label")] == outputs["label"]["data"]
    assert 'tuneloop_requests_total{route="grpc:ModelInfer",status="OK"}' in metrics
