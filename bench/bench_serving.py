"""Serving throughput and latency, side by side in one run.

    .venv/bin/python bench/bench_serving.py [--registry PATH] [--duration 10] [--variants raw,http,grpc,naive]

Compares, on the same texts (one per request, real amazon/yelp/imdb sentences):
  raw    ONNX Runtime called in-process, texts sorted by length, batches as large as the concurrency;
  raw-arrival  the same session on the texts in arrival order, cut into the service's length buckets
         (the ceiling is the best cell of these two);
  http   tuneloop serve, POST /classify, load from wrk at concurrency 1, 8, 32;
  http-batchable  the same model, bodies and answers, batched by BentoML's adaptive batching
         (@bentoml.api(batchable=True), bench/batchable_service.py) instead of tuneloop's micro-batcher;
  grpc   tuneloop serve, OIP v2 ModelInfer, load from a grpc.aio client at the same concurrencies;
  naive  a transformers PyTorch model behind BentoML answering each request as it comes.
Every variant runs on the provider and precision the service would choose: CUDA and the fp16 graph where a
GPU and onnxruntime-gpu are there (and PyTorch on the GPU for naive), the CPU and fp32 otherwise.
Writes bench/results/serving.md (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.model import load_served_model  # noqa: E402
from tests.conftest import AMAZON, IMDB, YELP, read_sentences  # noqa: E402
from tests.server_process import ServerProcess, tree_cpu_seconds  # noqa: E402
from tuneloop.events.broker import free_port  # noqa: E402
from tuneloop.inference import OnnxTextClassifier, choose_providers  # noqa: E402
from tuneloop.registry import Registry, State  # noqa: E402
from tuneloop.settings import get_settings  # noqa: E402

CONCURRENCY = (1, 8, 32)
# A server goes on answering the requests it had queued when its load generator stops (the naive baseline
# spent 0.8 CPU-seconds in the second after a c=32 cell); the next cell waits for that, not competes with it.
SETTLE_S = 1.5
VARIANTS = ("raw", "raw-arrival", "http", "http-batchable", "grpc", "http+bentoml-obs", "naive")


def ensure_model(registry_root: Path) -> str:
    registry = Registry(registry_root)
    if registry.production():
        return registry.production()
    # With a GPU the service serves the fp16 graph, so the benchmark model must have one.
    fp16 = ["--fp16"] if choose_providers()[0] == "CUDAExecutionProvider" else []
    subprocess.run([str(Path(sys.executable).parent / "tuneloop"), "train", "--data", str(AMAZON), "--registry",
                    str(registry_root), "--epochs", "1", "--max-length", "128", "--no-progress", *fp16], check=True)
    version = registry.list_versions()[-1].version
    registry.transition(version, State.APPROVED, "bench", "benchmark model")
    registry.promote(version, "bench", "benchmark model")
    return version


def bench_texts() -> list[str]:
    texts = [t for path in (AMAZON, YELP, IMDB) for t, _ in read_sentences(path)]
    random.Random(0).shuffle(texts)
    return texts


def raw_session(clf: OnnxTextClassifier, texts: list[str], sort: bool) -> Measure:
    """ONNX Runtime called in-process, ``concurrency`` texts a batch, for the cell's seconds. A variant of
    the interleaved rounds like the servers, so it meets the same machine and is summarised the same way.

    ``sort=True`` is the ceiling: every text sorted by length first, so no batch pads at all — an order
    no server sees, since it cannot wait for tomorrow's short texts. ``sort=False`` takes the texts in the
    order the load generators send them and cuts each batch into the same length buckets the service's
    batcher plans: the session alone on the service's own work."""

    def batches(size: int) -> list[list[str]]:
        if not sort:
            return [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]
        by_length = sorted(texts, key=len)
        cut = [by_length[i:i + size] for i in range(0, len(by_length) - size + 1, size)]
        # Shuffled, so that a cell of a few seconds meets the corpus's mix of lengths, as the servers
        # do, and not only its shortest texts.
        random.Random(size).shuffle(cut)
        return cut

    overhead = get_settings().serving.bucket_run_overhead_tokens

    def infer(chunk: list[str]) -> None:
        if sort:
            clf.run(clf.encode(chunk))
            return
        for _ in clf.run_buckets(clf.tokenize(chunk), len(chunk), overhead):
            pass

    def run(batch: int, seconds: int) -> dict[str, float]:
        latencies, done, i = [], 0, 0
        chunks = batches(batch)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            chunk = chunks[i % len(chunks)]
            i += 1
            t0 = time.perf_counter()
            infer(chunk)
            latencies.append(time.perf_counter() - t0)
            done += len(chunk)
        lat = np.asarray(latencies) * 1000
        return {"rps": done / (time.perf_counter() - started), "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)), "errors": 0}

    return run


def run_wrk(url: str, texts_file: Path, concurrency: int, duration: int) -> dict[str, float]:
    done = subprocess.run(
        ["wrk", "-t", "1" if concurrency < 8 else "2", "-c", str(concurrency), "-d", f"{duration}s",
         "--timeout", "30s", "-s", str(ROOT / "bench" / "wrk_classify.lua"), url],
        env={**os.environ, "TEXTS_FILE": str(texts_file)}, capture_output=True, text=True, check=True,
    )
    fields = dict(re.findall(r"(\w+)=(\d+)", done.stdout.split("RESULT", 1)[1]))
    seconds = int(fields["duration_us"]) / 1e6
    return {"rps": int(fields["requests"]) / seconds, "p50_ms": int(fields["p50_us"]) / 1000,
            "p99_ms": int(fields["p99_us"]) / 1000, "errors": int(fields["errors"]) + int(fields["non2xx"])}


async def grpc_load(port: int, name: str, texts: list[str], concurrency: int, duration: float) -> dict[str, float]:
    import grpc

    from service.grpc import grpc_predict_v2_pb2 as pb
    from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = await stub.ServerReady(pb.ServerReadyRequest())
        assert meta.ready
        deadline = time.perf_counter() + duration

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                text = texts[i % len(texts)].encode()
                request = pb.ModelInferRequest(model_name=name, inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="text", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[text]))])
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(request)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    lat = np.asarray(latencies) * 1000
    return {"rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors}


def median_cell(cells: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median throughput (its latencies with it, so the row stays one real run)."""
    ordered = sorted(cells, key=lambda cell: cell["rps"])
    return ordered[len(ordered) // 2]


Measure = Callable[[int, int], dict[str, float]]  # (concurrency, seconds) -> rps, p50_ms, p99_ms, errors


def _own_and_children_cpu_seconds() -> float:
    """This process's CPU (an in-process load generator) plus that of its finished children (wrk)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def with_cpu(run: Measure, processes: dict[str, int]) -> Measure:
    """``run``, plus the CPU spent per request by each named process tree (``<name>_cpu_ms``) and by the
    load generator (``client_cpu_ms``: wrk as a child, or the grpc.aio client in this process). On two
    shared cores CPU per request is steadier than throughput, and it shows where the cores went."""
    def measured(concurrency: int, seconds: int) -> dict[str, float]:
        before = {name: tree_cpu_seconds(pid) for name, pid in processes.items()}
        client_before = _own_and_children_cpu_seconds()
        result = run(concurrency, seconds)
        client_after = _own_and_children_cpu_seconds()
        requests = max(1.0, result["rps"] * seconds)
        for name, pid in processes.items():
            result[f"{name}_cpu_ms"] = (tree_cpu_seconds(pid) - before[name]) / requests * 1000
        result["client_cpu_ms"] = (client_after - client_before) / requests * 1000
        return result

    return measured


def interleaved_rounds(measure: dict[str, Measure], concurrency: tuple[int, ...], rounds: int,
                       duration: int) -> dict[str, dict[int, dict[str, float]]]:
    """Every variant is up at once and the cells alternate, round after round (median kept), so that a
    burst of other load on this shared machine hits every variant alike."""
    for run in measure.values():
        run(8, 2)  # warm-up
    samples: dict[str, dict[int, list[dict[str, float]]]] = {p: {c: [] for c in concurrency} for p in measure}
    for round_ in range(rounds):
        for c in concurrency:
            for name, run in measure.items():
                print(f"round {round_ + 1}/{rounds} {name} c={c} …", flush=True)
                samples[name][c].append(run(c, duration))
                time.sleep(SETTLE_S)
    return {name: {c: median_cell(cells) for c, cells in by_c.items()} for name, by_c in samples.items()}


def start_bento(target: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """``bentoml serve module:Class`` on a free port, in its own process group; returns the process and its
    /classify URL once /readyz answers."""
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1", **env}
    bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable))
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{target} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/classify"
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise TimeoutError(log.read_text()[-2000:])


def start_naive(version_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    return start_bento("bench.naive_service:NaiveTorch", {"NAIVE_MODEL_DIR": str(version_dir)}, log)


def start_batchable(registry_root: Path, version: str, log: Path) -> tuple[subprocess.Popen, str]:
    return start_bento("bench.batchable_service:Batchable",
                       {"BATCHABLE_REGISTRY": str(registry_root), "BATCHABLE_VERSION": version}, log)


def write_results(path: Path, lines: list[str]) -> None:
    """The results file (its folder made if need be), echoed to the terminal."""
    table = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    print(table)


def gpu_name() -> str:
    """", NVIDIA H100 80GB HBM3" where nvidia-smi answers, "" otherwise."""
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f", {found[0]}" if found else ""


def stop(proc: subprocess.Popen) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=ROOT / "bench" / ".work" / "registry")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.md")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the tuneloop service")
    parser.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}; the ceiling needs raw or raw-arrival")
    args = parser.parse_args()
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if not set(args.variants) & {"raw", "raw-arrival"}:
        parser.error("name raw or raw-arrival among --variants: the table divides by the raw session's best cell")
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the HTTP load: apt-get install wrk")
    version = ensure_model(args.registry)
    model_name = Registry(args.registry).card(version).model_name
    texts = bench_texts()
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"texts": [t]}) + "\n" for t in texts))

    observed = {"TUNELOOP_SERVING__BENTOML_METRICS": "true", "TUNELOOP_SERVING__TRACING": "true"}
    wanted = set(args.variants)
    # The raw variants run the version as the service opens it (provider, precision, token limit, threads),
    # one session for both: their cells never overlap.
    served = load_served_model(Registry(args.registry), version, get_settings().serving)
    started: list[Callable[[], None]] = []  # how to stop each server, in start order
    measure: dict[str, Measure] = {}
    try:
        if wanted & {"http", "grpc"}:  # one tuneloop service answers both transports
            service = ServerProcess(args.registry, work / "service.log", args=["--workers", str(args.workers)], poll_interval_s=None).start()
            started.append(service.stop)
        for variant in VARIANTS:  # the table keeps this order whatever order --variants names
            if variant not in wanted:
                continue
            if variant in ("raw", "raw-arrival"):
                measure[variant] = with_cpu(raw_session(served.classifier, texts, sort=variant == "raw"), {})
            elif variant == "http":
                measure[variant] = with_cpu(lambda c, d: run_wrk(f"{service.url}/classify", bodies, c, d),
                                            {"server": service.proc.pid})
            elif variant == "grpc":
                measure[variant] = with_cpu(
                    lambda c, d: asyncio.run(grpc_load(service.grpc_port, model_name, texts, c, d)),
                    {"server": service.proc.pid})
            elif variant == "http+bentoml-obs":
                service_obs = ServerProcess(args.registry, work / "service-obs.log", grpc=False, env=observed, poll_interval_s=None).start()
                started.append(service_obs.stop)
                measure[variant] = with_cpu(lambda c, d: run_wrk(f"{service_obs.url}/classify", bodies, c, d),
                                            {"server": service_obs.proc.pid})
            elif variant == "http-batchable":
                batchable, batchable_url = start_batchable(args.registry, version, work / "batchable.log")
                started.append(lambda proc=batchable: stop(proc))
                measure[variant] = with_cpu(lambda c, d: run_wrk(batchable_url, bodies, c, d), {"server": batchable.pid})
            elif variant == "naive":
                naive, naive_url = start_naive(Registry(args.registry).open_version(version).path, work / "naive.log")
                started.append(lambda proc=naive: stop(proc))
                measure[variant] = with_cpu(lambda c, d: run_wrk(naive_url, bodies, c, d), {"server": naive.pid})
        rows = interleaved_rounds(measure, CONCURRENCY, args.rounds, args.duration)
    finally:
        for stop_server in started:
            stop_server()
    # How BentoML's dispatcher formed the batches (logged by the service when it stops).
    if "http-batchable" in measure:
        print(*(line for line in (work / "batchable.log").read_text(errors="replace").splitlines()
                if "batches by size" in line), sep="\n")

    # The ceiling is the raw session's best cell, sorted or in arrival order with the service's buckets.
    best_raw = max(cell["rps"] for path in ("raw", "raw-arrival") if path in rows for cell in rows[path].values())
    lines = [
        f"Model {version} (MiniLM-L6 fine-tuned, {served.precision} fused graph, {served.provider}{gpu_name()}), "
        f"{os.cpu_count()} cores, one text per request, {len(texts)} real sentences, {args.duration} s per cell, "
        f"median of {args.rounds} interleaved rounds, {args.workers} service worker(s); load from wrk (HTTP) and a grpc.aio client on the same machine.",
        "",
        "`raw` is ONNX Runtime called in this process on the texts sorted by length, the concurrency's number of "
        "texts a batch (its p50/p99 are per batch). `raw-arrival` is the same session on the texts in the order "
        "the clients send them, cut into the service's length buckets. × raw best divides by the best raw cell. Server CPU: CPU seconds "
        "the server's processes (for raw: the session) spent per request; client CPU: the load generator's.",
        "",
        "| path | concurrency | requests/s | p50 ms | p99 ms | errors | × raw best | × naive | server CPU ms/req "
        "| client CPU ms/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in measure:
        for c in CONCURRENCY:
            r = rows[path][c]
            vs_naive = f"{r['rps'] / rows['naive'][c]['rps']:.2f}" if "naive" in rows else "—"
            server_cpu, client_cpu = ((r["client_cpu_ms"], "—") if path.startswith("raw")
                                      else (r["server_cpu_ms"], f"{r['client_cpu_ms']:.2f}"))
            lines.append(f"| {path} | {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{int(r['errors'])} | {r['rps'] / best_raw:.2f} | {vs_naive} | "
                         f"{server_cpu:.2f} | {client_cpu} |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
