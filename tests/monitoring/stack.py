"""Running pieces for the observability tests: a fed drift monitor, traffic for a real service, and real
Prometheus, Alertmanager and `tuneloop monitor` processes."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import yaml

from monitoring.errors import ReferenceUnavailableError
from monitoring.monitor import DriftMonitor
from monitoring.reference import ReferenceSample, reference_from_arrays
from monitoring.server import MonitorServer
from monitoring.window import Observation
from tests.fixtures.broker import kafka_env
from tuneloop.events.schemas import EventData, FeedbackEvent, PredictionEvent, encode_embedding
from tuneloop.settings import KafkaSettings, MonitorSettings

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
    settings = MonitorSettings(window_mode="count", window_size=100, window_step=50, port=0)
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


def consumed_monitor(kafka: KafkaSettings, version: str = "v1") -> tuple[DriftMonitor, MonitorServer]:
    """A monitor at its shipped window mode (time windows) on a free loopback port, fed through a real broker
    by its own consume loop: an in-domain window, then a drifted one, closed by the next window's traffic.
    Every series it exports exists, the consumer lag's included."""
    from datetime import datetime, timezone

    from monitoring.consume import ConsumeLoop
    from tuneloop.events.client_config import ensure_topics
    from tuneloop.events.consumer import EventConsumer
    from tuneloop.events.producer import EventLog

    rng = np.random.default_rng(5)
    reference = reference_from_arrays(version, LABELS, synthetic_rows(300, rng))
    settings = MonitorSettings(window_seconds=3600, max_window_sample=150, min_window_sample=100, port=0)
    monitor = DriftMonitor(settings, lambda v: reference)
    server = MonitorServer(monitor.metrics.registry, monitor.reports, host="127.0.0.1", port=0).start()
    ensure_topics(kafka)
    # Windows after the clock's current one: only traffic closes them, so the test decides when.
    start = time.time() + 3600
    start -= start % 3600
    log = EventLog(kafka, source="test-service")
    log.start()
    sent = 0
    for window, (shift, words, count) in enumerate(((0.0, WORDS, 150), (1.5, DOMAIN_WORDS, 150), (0.0, WORDS, 5))):
        rows = synthetic_rows(count, rng, shift, words)
        for i in range(count):
            at = datetime.fromtimestamp(start + window * 3600 + i, timezone.utc)
            log.publish_prediction(prediction_event(rows, i, version=version).model_copy(
                update={"request_id": f"w{window}-{i}", "timestamp": at}))
            sent += 1
    if not log.flush(timeout=30):
        raise RuntimeError("the predictions did not reach the broker")
    log.close()
    loop = ConsumeLoop(monitor)
    observed = {"outcome": "observed"}
    with EventConsumer(kafka, ["predictions"], group_id=f"monitor-{uuid.uuid4().hex[:8]}") as consumer:
        deadline = time.monotonic() + 60
        while monitor.metrics.registry.get_sample_value("tuneloop_monitor_events_total", observed) < sent:
            if time.monotonic() > deadline:
                raise RuntimeError("the monitor did not read every prediction in 60 s")
            loop.step(consumer, poll_timeout_ms=500)
        loop.step(consumer, poll_timeout_ms=500)  # one more poll: the lag after everything was read
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


class LoopbackProcess:
    """A real program on a free loopback port, its output in ``<workdir>/<name>.log``, ready when
    ``ready_path`` answers 200; stopped with SIGTERM (SIGKILL if it lingers)."""

    name = "process"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        from tuneloop.events.broker import free_port

        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / f"{self.name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def start(self, timeout: float = 60):
        self._log = open(self.log, "ab")  # a restarted process adds to its log
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env=None if self.env is None else {**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready: {self.tail()}")

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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrometheusProcess(LoopbackProcess):
    """Debian's ``/usr/bin/prometheus``, temp storage, evaluating ``rule_files`` (the project's rules by
    default) every second and sending alerts to ``alertmanager`` (host:port) when given."""

    name = "prometheus"

    def __init__(self, workdir: Path, targets: dict[str, str], rule_files: list[Path] | None = None,
                 alertmanager: str | None = None) -> None:
        super().__init__(workdir)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(f) for f in (rule_files or [ROOT / "monitoring" / "prometheus" / "rules.yml"])],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def command(self) -> list[str]:
        return ["/usr/bin/prometheus", f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h"]

    def query(self, expr: str) -> dict:
        return httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()


class AlertmanagerProcess(LoopbackProcess):
    """Debian's Alertmanager with ``config`` (a rendered alertmanager.yml), no cluster."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config: str) -> None:
        super().__init__(workdir)
        (workdir / "alertmanager.yml").write_text(config)

    def command(self) -> list[str]:
        return ["/usr/bin/prometheus-alertmanager", f"--config.file={self.workdir / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="]


class MonitorProcess(LoopbackProcess):
    """``tuneloop monitor`` over ``registry``, consuming the topics of ``kafka``."""

    name = "monitor"
    ready_path = "/healthz"

    def __init__(self, workdir: Path, registry: Path, kafka: KafkaSettings, env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, env={**kafka_env(kafka), **(env or {})})
        self.registry = registry

    def command(self) -> list[str]:
        return [sys.executable, "-m", "monitoring.cli", "monitor", "--registry", str(self.registry),
                "--host", "127.0.0.1", "--port", str(self.port)]


class AdapterProcess(LoopbackProcess):
    """``tuneloop adapt`` over ``registry`` with its store, policy and webhook token, consuming ``kafka``'s topics."""

    name = "adapter"
    ready_path = "/healthz"

    def __init__(self, workdir: Path, registry: Path, kafka: KafkaSettings, store_url: str, policy: Path,
                 token_file: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, env={**kafka_env(kafka), "TUNELOOP_ADAPTER__WEBHOOK_TOKEN_FILE": str(token_file),
                                       "TUNELOOP_ADAPTER__WORKDIR": str(workdir / "staging"),
                                       "TUNELOOP_ADAPTER__TICK_S": "1", **(env or {})})
        self.registry, self.store_url, self.policy = registry, store_url, policy

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tuneloop.cli", "adapt", "--registry", str(self.registry), "--store",
                self.store_url, "--policy", str(self.policy), "--host", "127.0.0.1", "--port", str(self.port)]

    def status(self) -> dict:
        return httpx.get(f"{self.url}/status", timeout=10).json()

    def kill(self) -> None:
        """SIGKILL, as when its container dies mid-way."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def shortened_rules(folder: Path) -> Path:
    """rules.yml with every `for:` cut to 2 s: the same expressions, labels and annotations."""
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def shortened_routing(config: str) -> str:
    """The rendered Alertmanager configuration with its group timers cut to seconds."""
    document = yaml.safe_load(config)
    routes = [document["route"]]
    while routes:
        route = routes.pop()
        for timer in ("group_wait", "group_interval"):
            if timer in route:
                route[timer] = "1s"
        routes.extend(route.get("routes", []))
    document["route"].update(group_wait="1s", group_interval="1s")
    return yaml.safe_dump(document)


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
