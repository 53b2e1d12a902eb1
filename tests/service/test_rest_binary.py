"""The OIP v2 REST binary tensor data extension (service/rest_binary.py) against a real ``tuneloop serve``:
Triton's own REST client with its defaults (binary inputs and outputs), hand-made binary bodies, and every
malformed one answered with a 400 that names the problem. KServe's REST client: test_kserve_client.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import oip, rest_binary
from service.errors import InvalidInputError
from service.oip import Tensor
from tests.server_process import ServerProcess
from tests.service.conftest import classify_columns

MODEL = "sentiment"
TEXTS = ["great phone, love it", "battery died after a day", "the screen cracked", "works as advertised"]


@pytest.fixture(scope="module")
def server(served_registry: Path, tmp_path_factory: pytest.TempPathFactory):
    with ServerProcess(served_registry, tmp_path_factory.mktemp("logs") / "server.log", grpc=False) as proc:
        yield proc


@pytest.fixture(scope="module")
def classified(server: ServerProcess) -> tuple[list[str], np.ndarray]:
    return classify_columns(server.url, MODEL, TEXTS)


@pytest.fixture(scope="module")
def triton(server: ServerProcess):
    # No skip when it is missing: the dev extra installs tritonclient[http], and a skip would hide a broken setup.
    import tritonclient.http as http
    client = http.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield http, client
    client.close()


def bytes_elements(texts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def binary_body(header: dict, data: bytes = b"") -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}
    return head + data, headers


def text_input(binary: bytes, **overrides) -> dict:
    """The text input's JSON, its data in ``binary`` (after the header); ``overrides`` replace its fields."""
    return {"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES",
            "parameters": {"binary_data_size": len(binary)}, **overrides}


def post(server: ServerProcess, content: bytes, headers: dict[str, str],
         path: str = f"/v2/models/{MODEL}/infer") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=30)


# ------------------------------------------------------------------------ Triton's REST client, its defaults


def test_tritonclient_defaults_binary_in_and_out_agree_with_classify(triton, classified) -> None:
    """set_data_from_numpy sends binary by default; no requested outputs makes tritonclient ask for all of
    them in binary (binary_data_output); its InferResult reads the binary answer."""
    http, client = triton
    labels, probabilities = classified
    text = http.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
    result = client.infer(MODEL, [text], request_id="triton-binary")
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (MODEL, "v1")
    assert response["id"] == "triton-binary"
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in response["outputs"])
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(probs, probabilities, rtol=0, atol=1e-6)
    assert [x.decode() for x in result.as_numpy("label")] == labels
    request_ids = [x.decode() for x in result.as_numpy("request_id")]
    assert len(set(request_ids)) == len(TEXTS) and all(len(r) == 32 for r in request_ids)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_tritonclient_mixed_outputs_and_a_pinned_version(triton, classified) -> None:
    """Requested outputs: each one's binary_data decides (tritonclient's default is True)."""
    http, client = triton
    labels, probabilities = classified
    text = http.InferInput("text", [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
    outputs = [http.InferRequestedOutput("label"),
               http.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(MODEL, [text], model_version="v1", outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(by_name) == ["label", "probabilities"]
    assert "binary_data_size" in by_name["label"]["parameters"] and "data" in by_name["probabilities"]
    assert [x.decode() for x in result.as_numpy("label")] == labels
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=0, atol=1e-6)


def test_tritonclient_json_inputs_still_get_binary_outputs(triton, classified) -> None:
    """binary_data=False sends a plain JSON body (with no Content-Type) that asks for binary_data_output: the
    answer is binary all the same."""
    http, client = triton
    labels, _ = classified
    text = http.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=np.object_), binary_data=False)
    result = client.infer(MODEL, [text])
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert [x.decode() for x in result.as_numpy("label")] == labels


# ------------------------------------------------------------------------ hand-made binary bodies


def test_binary_inputs_with_json_outputs_answer_json(server: ServerProcess, classified) -> None:
    labels, probabilities = classified
    data = bytes_elements([t.encode() for t in TEXTS])
    r = post(server, *binary_body({"id": "by-hand", "inputs": [text_input(data)]}, data))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    body = r.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert body["id"] == "by-hand" and outputs["label"]["data"] == labels
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(-1, 2), probabilities,
                               rtol=0, atol=1e-6)


def test_binary_outputs_are_little_endian_and_length_prefixed(server: ServerProcess, classified) -> None:
    """No Content-Type (as tritonclient sends) and a header with its data in JSON: the header's length
    alone says it's the extension; one output asked for in binary overrides binary_data_output."""
    labels, probabilities = classified
    text = {"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}
    head = json.dumps({"inputs": [text],
                       "parameters": {"binary_data_output": False},
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                   {"name": "label"}]}).encode()
    r = post(server, head, {"inference-header-content-length": str(len(head))})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:length])
    probs, label = header["outputs"]
    assert probs == {"name": "probabilities", "datatype": "FP32", "shape": [len(TEXTS), 2],
                     "parameters": {"binary_data_size": len(TEXTS) * 2 * 4}}
    assert label["data"] == labels
    np.testing.assert_allclose(np.frombuffer(r.content[length:], dtype="<f4").reshape(-1, 2), probabilities,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b'{"inputs": []}', {"content-type": "application/octet-stream"},
         "needs the Inference-Header-Content-Length header"),
        (b'{"inputs": []}', {"inference-header-content-length": "twelve"},
         "'twelve' is not a non-negative integer"),
        (b'{"inputs": []}', {"inference-header-content-length": "-3"}, "'-3' is not a non-negative integer"),
        (b'{"inputs": []}', {"inference-header-content-length": "0"}, "Inference-Header-Content-Length is 0"),
        (b'{"inputs": []}', {"inference-header-content-length": "99"},
         "is 99 but the body has only 14 bytes"),
        (b'{"inputs": [', {"inference-header-content-length": "12"}, "is not valid JSON"),
        (b'\xff\xfe\x00{}', {"inference-header-content-length": "5"}, "is not valid JSON"),
        (b'[1, 2]', {"inference-header-content-length": "6"}, "is a JSON list, not an object"),
        (b'{"inputs": []}', {"inference-header-content-length": "14"}, "invalid inference header: inputs"),
    ],
)
def test_malformed_framing_gets_a_400_that_names_the_problem(server: ServerProcess, content: bytes,
                                                             headers: dict[str, str], message: str) -> None:
    r = post(server, content, {"content-type": "application/octet-stream", **headers})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


GOOD = bytes_elements([t.encode() for t in TEXTS])
NOT_UTF8 = bytes_elements([b"ok", b"\xff\xfe"])
BLANK = bytes_elements([b" "])


@pytest.mark.parametrize(
    ("inputs", "data", "extra", "message"),
    [
        ([text_input(GOOD)], GOOD + b"xx", {},
         f"add up to {len(GOOD)} bytes but {len(GOOD) + 2} bytes follow"),
        ([text_input(GOOD)], GOOD[:-1], {}, f"add up to {len(GOOD)} bytes but {len(GOOD) - 1} bytes follow"),
        ([text_input(b"\x02\x00")], b"\x02\x00", {}, "element 0: its 4-byte length prefix is cut off"),
        ([text_input(b"\x09\x00\x00\x00abc")], b"\x09\x00\x00\x00abc", {},
         "element 0 claims 9 bytes but 3 remain"),
        ([text_input(NOT_UTF8, shape=[2])], NOT_UTF8, {}, "element 1 is not valid UTF-8"),
        ([text_input(GOOD, datatype="INT32")], GOOD, {}, "has binary_data_size but datatype INT32"),
        ([text_input(b"", parameters={"binary_data_size": -1})], b"", {}, "binary_data_size -1"),
        ([text_input(b"", parameters={"binary_data_size": "12"})], b"", {}, "binary_data_size '12'"),
        ([text_input(GOOD, data=TEXTS)], GOOD, {}, "has both data and binary_data_size"),
        ([text_input(b"", parameters={})], b"", {}, "has neither data nor parameters.binary_data_size"),
        ([text_input(GOOD, shape=[5])], GOOD, {}, "has shape [5] but 4 elements"),
        ([text_input(GOOD)], GOOD, {"parameters": {"binary_data_output": "yes"}},
         "binary_data_output is 'yes'"),
        ([text_input(GOOD)], GOOD, {"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
         "output 'label' parameter binary_data is 1"),
        ([text_input(GOOD)], GOOD, {"outputs": [{"name": "logits"}]}, "unknown output(s) ['logits']"),
        ([text_input(GOOD), text_input(GOOD)], GOOD + GOOD, {}, "expected exactly one input tensor"),
        ([text_input(BLANK, shape=[1])], BLANK, {}, "empty or only whitespace"),
    ],
)
def test_malformed_tensors_get_a_400_that_names_the_problem(server: ServerProcess, inputs: list[dict],
                                                            data: bytes, extra: dict, message: str) -> None:
    r = post(server, *binary_body({"inputs": inputs, **extra}, data))
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_routes_statuses_and_content_types(server: ServerProcess) -> None:
    content, headers = binary_body({"inputs": [text_input(GOOD)]}, GOOD)
    assert post(server, content, headers, "/v2/models/sentiment/versions/v1/infer").status_code == 200
    unknown = post(server, content, headers, "/v2/models/nope/infer")
    assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
    # Binary bodies are for the infer routes only; other media types stay refused there.
    refused = post(server, content, headers, "/classify")
    assert refused.status_code == 415 and "send application/json" in refused.text
    plain = post(server, content, {**headers, "content-type": "text/plain"})
    assert plain.status_code == 415 and "application/octet-stream" in plain.json()["error"]
    bad = post(server, content[:-1], headers)
    assert bad.status_code == 400 and "add up to" in bad.json()["error"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'tuneloop_requests_total{route="/v2/models/{name}/infer",status="400"}' in metrics


def test_openapi_and_server_metadata_name_the_extension(server: ServerProcess) -> None:
    assert "binary_tensor_data" in httpx.get(f"{server.url}/v2", timeout=30).json()["extensions"]
    spec = httpx.get(f"{server.url}/v2/openapi.json", timeout=30).json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = spec["paths"][path]["post"]
        assert "binary tensor data extension" in operation["description"]
        assert set(operation["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
        assert set(operation["responses"]["200"]["content"]) == set(operation["requestBody"]["content"])
        assert "Inference-Header-Content-Length" in [p["name"] for p in operation["parameters"]]


# ------------------------------------------------------------------------ the codec alone


def test_codec_round_trip_and_output_choice() -> None:
    texts = ["ünïcode", "", "plain"]
    raw = bytes_elements([t.encode() for t in texts])
    assert oip.decode_bytes_elements(raw, "text") == [t.encode() for t in texts]
    assert oip.encode_raw_tensor(Tensor("label", "BYTES", [3], texts)) == raw
    assert oip.encode_raw_tensor(Tensor("p", "FP32", [2], [0.25, -1.5])) == struct.pack("<2f", 0.25, -1.5)

    class Out:
        def __init__(self, name: str, binary: bool | None) -> None:
            self.name, self.parameters = name, None if binary is None else {"binary_data": binary}

    names = ["probabilities", "label", "request_id"]
    assert rest_binary.binary_outputs(None, None, names) == set()
    assert rest_binary.binary_outputs({"binary_data_output": True}, None, names) == set(names)
    requested = [Out("label", False), Out("probabilities", None)]
    assert rest_binary.binary_outputs({"binary_data_output": True}, requested, ["label", "probabilities"]) \
        == {"probabilities"}
    with pytest.raises(InvalidInputError, match="must be true or false"):
        rest_binary.binary_outputs({"binary_data_output": 1}, None, names)
