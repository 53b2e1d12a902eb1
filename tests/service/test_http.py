"""The HTTP surface of a real ``tuneloop serve`` process: /classify, OIP v2 REST, metrics, bad input, fuzzing."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.dataplane import DataPlane
from service.errors import TextTooLongError
from service.swap import ModelManager
from tests.conftest import ROOT
from tests.server_process import ServerProcess
from tests.service.conftest import classify_now
from tuneloop.registry import Registry
from tuneloop.settings import ServingSettings


@pytest.fixture(scope="module")
def server(served_registry: Path, tmp_path_factory: pytest.TempPathFactory):
    with ServerProcess(served_registry, tmp_path_factory.mktemp("logs") / "server.log", grpc=False) as proc:
        yield proc


def post(server: ServerProcess, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)


def test_classify_names_the_version_and_returns_probabilities(server: ServerProcess) -> None:
    r = post(server, "/classify", json={"texts": ["great phone, love it", "battery died after a day"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"]) == ("sentiment", "v1")
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert set(p["probabilities"]) == {"0", "1"}
        assert p["probabilities"][p["label"]] == pytest.approx(p["score"])
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(p["request_id"]) == 32 and p["truncated"] is False
    assert body["predictions"][0]["request_id"] != body["predictions"][1]["request_id"]


def test_long_text_is_truncated_by_tokens_and_says_so(server: ServerProcess) -> None:
    r = post(server, "/classify", json={"texts": ["short", "word " * 300]})
    assert r.status_code == 200
    assert [p["truncated"] for p in r.json()["predictions"]] == [False, True]


def test_same_answer_over_http_and_oip(server: ServerProcess) -> None:
    texts = ["the screen cracked", "works as advertised"]
    http = post(server, "/classify", json={"texts": texts}).json()
    oip = post(server, "/v2/models/sentiment/infer",
               json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}).json()
    probs = {o["name"]: o for o in oip["outputs"]}["probabilities"]
    assert probs["shape"] == [2, 2]
    flat = [p["probabilities"][label] for p in http["predictions"] for label in ("0", "1")]
    assert probs["data"] == pytest.approx(flat, abs=1e-5)
    assert {o["name"]: o for o in oip["outputs"]}["label"]["data"] == [p["label"] for p in http["predictions"]]
    assert oip["model_version"] == "v1"


def test_oip_health_and_metadata(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2/models/sentiment").json()
    assert meta["versions"] == ["v1"] and meta["inputs"][0]["datatype"] == "BYTES"
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"
    assert meta["parameters"]["precision"] == "fp32" and meta["parameters"]["labels"] == ["0", "1"]
    assert httpx.get(f"{server.url}/v2/models/sentiment/versions/v1/ready").json()["ready"] is True
    assert httpx.get(f"{server.url}/v2").json()["name"] == "tuneloop"
    named = post(server, "/v2/models/sentiment/versions/v1/infer",
                 json={"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["fine"]}],
                       "outputs": [{"name": "label"}]})
    assert [o["name"] for o in named.json()["outputs"]] == ["label"]


GOOD = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/classify", b'{"texts": ["unclosed', 400, "Invalid JSON"),
        ("/classify", b'{"texts": ["\xff\xfe"]}', 400, "Invalid JSON"),  # invalid UTF-8
        ("/classify", {"texts": "just a string"}, 400, "valid array"),
        ("/classify", {"texts": [1, 2]}, 400, "valid string"),
        ("/classify", {"wrong": ["x"]}, 400, "texts: Field required"),
        ("/classify", {"texts": []}, 400, "'texts' is empty"),
        ("/classify", {"texts": ["ok", "   "]}, 400, "texts[1] is empty or only whitespace"),
        ("/classify", {"texts": ["x"] * 65}, 400, "the limit is 64"),
        ("/classify", {"texts": ["x" * 10_001]}, 413, "10001 characters"),
        ("/v2/models/nope/infer", {"inputs": [GOOD]}, 404, "unknown model 'nope'"),
        ("/v2/models/sentiment/versions/v9/infer", {"inputs": [GOOD]}, 404, "'v9' is not served"),
        ("/v2/models/sentiment/infer", {"inputs": [GOOD | {"datatype": "INT32"}]}, 400, "must be BYTES"),
        ("/v2/models/sentiment/infer", {"inputs": [GOOD | {"shape": [2]}]}, 400, "but 1 elements"),
        ("/v2/models/sentiment/infer", {"inputs": [GOOD | {"shape": [1, 2]}]}, 400, "[n] or [n, 1]"),
        ("/v2/models/sentiment/infer", {"inputs": [GOOD | {"data": [3]}]}, 400, "not a string"),
        ("/v2/models/sentiment/infer", {"inputs": [GOOD, GOOD]}, 400, "exactly one input"),
        ("/v2/models/sentiment/infer", {"inputs": []}, 400, "invalid request"),
        ("/v2/models/sentiment/infer", {"inputs": [GOOD], "outputs": [{"name": "x"}]}, 400, "unknown output"),
        ("/v2/models/sentiment/infer", b"not json", 400, "invalid request"),
        ("/v2/models/sentiment/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
         b'"data": ["\xff\xfe"]}]}', 400, "Invalid JSON: invalid unicode code point at line 1"),  # invalid UTF-8
        ("/feedback", b'{"request_id": "\xff"}', 400, "not JSON in UTF-8"),
        ("/classify", ("multipart/form-data", b'{"texts": ["x"]}'), 415, "send application/json"),
        ("/v2/models/sentiment/infer", ("text/plain", b"hello"), 415, "send application/json"),
    ],
)
def test_bad_input_gets_a_4xx_that_names_the_problem(server: ServerProcess, path: str, payload, status: int,
                                                     message: str) -> None:
    if isinstance(payload, tuple):
        r = post(server, path, content=payload[1], headers={"content-type": payload[0]})
    elif isinstance(payload, bytes):
        r = post(server, path, content=payload, headers={"content-type": "application/json"})
    else:
        r = post(server, path, json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


LIMIT = ServingSettings().max_body_bytes  # the server runs with the default
PADDED = {"/classify": {"texts": ["fine"]},
          "/v2/models/sentiment/infer": {"inputs": [GOOD]}}


def padded_body(path: str) -> bytes:
    """A valid request padded with JSON whitespace past the body limit: today's parser would accept it."""
    return json.dumps(PADDED[path]).encode() + b" " * LIMIT


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """One HTTP/1.1 response with a Content-Length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("path", list(PADDED))
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_before_the_rest_is_sent(server: ServerProcess, path: str,
                                                                  framing: str) -> None:
    """The client sends only the head (Content-Length) or the first chunks past the limit, then waits: the
    413 comes without the rest of the body, which the server never needs."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        if framing == "content-length":
            sock.sendall(f"{head}Content-Length: {LIMIT + 1}\r\n\r\n".encode())
        else:
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b" " * (64 * 1024)
            for _ in range(LIMIT // len(chunk) + 1):  # past the limit; the closing chunk never comes
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, headers, body = read_response(sock)
    assert status == 413, body
    assert headers["connection"] == "close"
    assert f"the limit of {LIMIT} bytes" in body["error"]


@pytest.mark.parametrize("path", list(PADDED))
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_http_clients_read_the_413_for_a_whole_body_over_the_limit(server: ServerProcess, path: str,
                                                                    chunked: bool) -> None:
    body = padded_body(path)
    content = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    refused = post(server, path, content=content, headers={"content-type": "application/json"})
    assert refused.status_code == 413, refused.text
    assert "request body too large" in refused.json()["error"]
    # Within the limit, the same request is served.
    within = post(server, path, content=body[:LIMIT], headers={"content-type": "application/json"})
    assert within.status_code == 200, within.text
    metrics = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'^tuneloop_requests_rejected_total\{reason="body_too_large"\} [1-9]', metrics, re.M)


def test_reject_mode_refuses_texts_over_the_token_limit(served_registry: Path) -> None:
    manager = ModelManager(Registry(served_registry), ServingSettings(on_too_long="reject"))
    manager.check_once()
    plane = DataPlane(manager, manager.settings)
    plane.start()
    try:
        assert classify_now(plane, ["short enough"]).model_version == "v1"
        with pytest.raises(TextTooLongError, match=r"texts\[1\] has \d+ tokens; the model reads at most 32") as err:
            classify_now(plane, ["fine", "word " * 100])
        assert err.value.status == 413
    finally:
        plane.stop()


def test_metrics_name_routes_versions_and_provider(server: ServerProcess) -> None:
    post(server, "/classify", json={"texts": ["a fine phone"]})
    post(server, "/classify", json={"texts": []})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'tuneloop_requests_total{route="/classify",status="200"}' in text
    assert 'tuneloop_requests_total{route="/classify",status="400"}' in text
    assert 'tuneloop_model_info{model_name="sentiment",model_version="v1",precision="fp32",provider="CPUExecutionProvider"} 1.0' in text
    for family in ("tuneloop_batch_size_bucket", "tuneloop_inference_duration_seconds_bucket",
                   "tuneloop_predictions_total", "tuneloop_request_duration_seconds_bucket",
                   "tuneloop_inflight_requests", "tuneloop_model_loaded_timestamp_seconds"):
        assert family in text, family
    # Every tuneloop_* series the service exports is documented; BentoML's own are off unless asked for.
    exported = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("tuneloop_")}
    documented = set(re.findall(r"^\| `(tuneloop_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    assert exported - {d.removesuffix("_total") for d in documented} == set()
    assert "bentoml_service_" not in text


@pytest.mark.parametrize("spec", ["/docs.json", "/v2/openapi.json"])
def test_fuzzing_the_openapi_spec_never_yields_a_server_error(server: ServerProcess, spec: str) -> None:
    spec_url = f"{server.url}{spec}"
    assert httpx.get(spec_url).status_code == 200
    schemathesis = Path(sys.executable).parent / "schemathesis"
    base = server.url
    done = subprocess.run(
        [str(schemathesis), "run", spec_url, "--url", base, "--checks", "not_a_server_error",
         "--max-examples", "40", "--generation-deterministic", "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_graceful_shutdown_answers_requests_in_flight(served_registry: Path, tmp_path: Path) -> None:
    """SIGTERM while requests wait in the batcher: every one of them is still answered."""
    import concurrent.futures
    import os
    import re
    import signal
    import time

    # A batch that waits up to 5 s to fill keeps the requests in flight long enough to signal. A batch waits
    # only while it is smaller than recent ones: after one of 64 texts, the next expects 32 and the 16
    # requests below wait for the rest.
    proc = ServerProcess(served_registry, tmp_path / "server.log", grpc=False,
                         env={"TUNELOOP_SERVING__MAX_LATENCY_MS": "5000",
                              "TUNELOOP_SERVING__MAX_BATCH_SIZE": "100000"}).start()
    burst = httpx.post(f"{proc.url}/classify", json={"texts": [f"burst {i}" for i in range(64)]}, timeout=60)
    assert burst.status_code == 200

    def call(i: int) -> tuple[int, float]:
        r = httpx.post(f"{proc.url}/classify", json={"texts": [f"request {i}"]}, timeout=60)
        return r.status_code, time.monotonic()

    def inflight() -> float:
        text = httpx.get(f"{proc.url}/metrics", timeout=5).text
        return float(re.search(r"^tuneloop_inflight_requests (\S+)$", text, re.M).group(1))

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(call, i) for i in range(16)]
        deadline = time.monotonic() + 4
        while inflight() < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inflight() == 16
        os.killpg(proc.proc.pid, signal.SIGTERM)
        terminated_at = time.monotonic()
        results = [f.result() for f in futures]
    assert [status for status, _ in results] == [200] * 16
    assert all(done > terminated_at for _, done in results)
    assert proc.proc.wait(timeout=60) == 0, proc.tail()


def test_a_dead_workers_live_gauges_leave_the_sums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed with events in its spool must not keep tuneloop_spool_bytes (and the spooling alert) up."""
    import subprocess
    import sys

    from service.metrics import render_metrics

    folder = tmp_path / "multiproc"
    folder.mkdir()
    worker = ("from prometheus_client import Gauge\n"
              "Gauge('tuneloop_spool_bytes', 'spool', multiprocess_mode='livesum').set(4096)\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", worker], env=env, check=True)  # it has exited: its pid is dead
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    text = render_metrics()[0].decode()
    assert "tuneloop_spool_bytes 4096.0" not in text
    assert not list(folder.glob("gauge_livesum_*.db"))
