"""Running pieces for the observability tests: a fed drift monitor, a service-metrics stand-in, Prometheus."""

from __future__ import annotations

import contextlib

import random
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml


from monitoring.monitor import DriftMonitor
from monitoring.errors import ReferenceUnavailableError
from monitoring.reference import ReferenceSample, reference_from_arrays
from monitoring.server import MonitorServer
from monitoring.window import Observation
from tuneloop.events.schemas import EventData, FeedbackEvent, PredictionEvent, encode_embedding
from tuneloop.settings import MonitorSettings

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "good bad phone battery screen great poor quality price works broke love hate sound case charger".split()
)
LABELS = ["negative", "positive"]
DOMAIN_WORDS = "pasta waiter movie plot actor dessert cinema service menu script".split()


def synthetic_rows(n: int, rng: np.random.Generator, shift: float = 0.0, words: list[str] = WORDS) -> dict:
    embeddings = rng.normal(shift, 1.0, size=(n, 16)).astype(np.float32)
    logits = embeddings[:, :2] * 2
    probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    texts = np.array(
        [" ".join(rng.choice(words, size=int(rng.integers(3, 15)))) for _ in range(n)], dtype=str
    )
    return {
        "embeddings": embeddings,
        "probabilities": probabilities,
        "predictions": probabilities.argmax(1),
        "texts": texts,
    }


def prediction_event(rows, i, version="v1", input_mode="text") -> PredictionEvent:
    text = str(rows["texts"][i])
    return PredictionEvent(
        request_id=f"r{i}",
        model_name="sentiment",
        model_version=version,
        input_mode=input_mode,
        text=text if input_mode == "text" else None,
        text_sha256=None if input_mode == "text" else "0" * 64,
        text_length=len(text),
        label=LABELS[int(rows["predictions"][i])],
        probabilities={name: float(p) for name, p in zip(LABELS, rows["probabilities"][i], strict=True)},
        embedding=encode_embedding(rows["embeddings"][i]),
        latency_ms=3.0,
    )


def fed_monitor(version: str = "v1") -> tuple[DriftMonitor, MonitorServer]:
    """A monitor on a free loopback port that has seen in-domain windows and then drifted ones."""
    rng = np.random.default_rng(5)
    reference = reference_from_arrays(version, ["negative", "positive"], synthetic_rows(300, rng))
    settings = MonitorSettings(window_size=100, window_step=50, port=0)
    monitor = DriftMonitor(settings, lambda v: reference)
    server = MonitorServer(monitor.metrics.registry, monitor.reports, host="127.0.0.1", port=0).start()
    now = time.time()
    for shift, words in ((0.0, WORDS), (1.5, DOMAIN_WORDS)):
        rows = synthetic_rows(150, rng, shift, words)
        for i in range(150):
            monitor.observe(
                Observation(
                    version,
                    rows["embeddings"][i],
                    rows["probabilities"][i],
                    int(rows["predictions"][i]),
                    str(rows["texts"][i]),
                    now,
                ),
                "sentiment",
            )
    return monitor, server


@contextlib.contextmanager
def drive_service_traffic(server, interval_s: float = 0.1):
    """Keep a real service busy until the block ends: /classify, OIP REST, gRPC, feedback, and a
    share of bad requests, so that counters of every outcome move while Prometheus scrapes."""
    import grpc
    import httpx

    from service.grpc import grpc_predict_v2_pb2 as pb
    from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    stop = threading.Event()

    def loop() -> None:
        rnd = random.Random(1)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                texts = [f"the battery is {rnd.choice(['great', 'awful', 'fine'])}"] * rnd.randint(1, 4)
                ids = [p["request_id"] for p in http.post("/classify", json={"texts": texts}).json()["predictions"]]
                http.post("/feedback", json={"request_id": ids[0], "label": rnd.choice(["0", "1"])})
                http.post("/v2/models/sentiment/infer", json={"inputs": [
                    {"name": "text", "shape": [1], "datatype": "BYTES", "data": texts[:1]}]})
                http.post("/classify", json={"texts": []})  # a 400
                tensor = pb.ModelInferRequest.InferInputTensor(
                    name="text", datatype="BYTES", shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[texts[0].encode()]))
                stub.ModelInfer(pb.ModelInferRequest(model_name="sentiment", inputs=[tensor]))
                stop.wait(interval_s)
        channel.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


class PrometheusProcess:
    """Debian's ``/usr/bin/prometheus`` on a free loopback port, temp storage, the project's rules loaded."""

    def __init__(self, workdir: Path, targets: dict[str, str], binary: str = "/usr/bin/prometheus") -> None:
        from tuneloop.events.broker import free_port

        self.port = free_port()
        self.workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "monitoring" / "prometheus" / "rules.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.cmd = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusProcess:
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready: {self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> dict:
        return httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()


def unusable_predictions(rows: dict, i: int) -> list[tuple[EventData, str]]:
    """(event, reason) of every schema-valid event on the predictions topic the monitor must skip (the
    reference is version "v1", 16-wide embeddings, LABELS)."""
    good = prediction_event(rows, i)
    return [
        (FeedbackEvent(request_id="r0", label="positive"), "wrong_type"),
        (prediction_event(rows, i, version="v9"), "unknown_version"),
        (good.model_copy(update={"label": "neutral"}), "labels"),
        (good.model_copy(update={"probabilities": {"negative": 1.0}}), "labels"),
        (good.model_copy(update={"embedding": "AA=="}), "bad_embedding"),  # one byte: half a float16
        (good.model_copy(update={"embedding": encode_embedding(np.full(16, np.nan))}), "bad_embedding"),
        (good.model_copy(update={"embedding": encode_embedding(rows["embeddings"][i][:8])}),
         "embedding_width"),
    ]


def only_v1(reference: ReferenceSample):
    def load(version: str) -> ReferenceSample:
        if version != reference.version:
            raise ReferenceUnavailableError(version, "not in the registry")
        return reference

    return load
