"""Where a lone request's CPU goes inside the serving process, without sockets: the front end's budget.

    .venv/bin/python bench/bench_inprocess.py [--model tiny|minilm] [--texts 2000] [--rounds 3]

One text at a time, event log off: CPU time of the whole process per text and the p50 of each call's wall
time, median of interleaved rounds. ``--model tiny`` (the default) is the test suite's tiny model on one ONNX
Runtime thread, so that inference is nearly free and the steps around it show; ``--model minilm`` is the
benchmark's fine-tuned MiniLM (bench_serving's registry) with the service's own thread settings, where the
p50s say what a lone request pays beyond the session before any transport. Steps:
  tokenize            the Rust tokenizer alone
  tokenize + run      tokenizing and ``session.run``, nothing else: what inference costs a lone text
  batcher             ``MicroBatcher.infer`` awaited on a uvloop loop: the hand-off to the batcher thread, the
                      batch's bookkeeping and metrics, the answer back on the loop
  data plane          ``DataPlane.classify``: validation and the per-text predictions on top
  bare hand-off       a future handed to a bare thread and set back through ``call_soon_threadsafe``: the
                      floor of any thread hand-off on this machine
Writes bench/results/inprocess.md (inprocess-minilm.md for MiniLM). bench_frontend.py measures the same path
through HTTP and gRPC servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.update({"TUNELOOP_KAFKA__ENABLED": "false", "TUNELOOP_SERVING__GRPC_PORT": "0"})

import uvloop  # noqa: E402

from bench.bench_frontend import SERVICE_ENV, ensure_tiny_registry  # noqa: E402
from bench.bench_serving import bench_texts, ensure_model, write_results  # noqa: E402

Cell = tuple[float, float]  # CPU µs per text, p50 ms per call


def _cell(cpu_seconds: float, latencies: list[float]) -> Cell:
    return cpu_seconds / len(latencies) * 1e6, statistics.median(latencies) * 1e3


def measure_calls(run: Callable[[str], object], texts: list[str]) -> Cell:
    latencies, started = [], time.process_time()
    for text in texts:
        began = time.perf_counter()
        run(text)
        latencies.append(time.perf_counter() - began)
    return _cell(time.process_time() - started, latencies)


async def measure_awaits(run: Callable[[str], Awaitable[object]], texts: list[str]) -> Cell:
    latencies, started = [], time.process_time()
    for text in texts:
        began = time.perf_counter()
        await run(text)
        latencies.append(time.perf_counter() - began)
    return _cell(time.process_time() - started, latencies)


def start_bare_worker() -> queue.SimpleQueue:
    handed: queue.SimpleQueue = queue.SimpleQueue()

    def answer() -> None:
        while True:
            future, loop = handed.get()
            loop.call_soon_threadsafe(future.set_result, None)

    threading.Thread(target=answer, daemon=True).start()
    return handed


async def measure(plane, texts: list[str], rounds: int) -> dict[str, list[Cell]]:
    classifier = plane.manager.current.classifier
    handed = start_bare_worker()
    loop = asyncio.get_running_loop()
    overhead = plane.batcher.run_overhead_tokens

    def run_alone(text: str) -> None:
        for _ in classifier.run_buckets(classifier.tokenize([text]), 1, overhead):
            pass

    async def bare_hand_off(_: str) -> None:
        future = loop.create_future()
        handed.put((future, loop))
        await future

    async def batcher(text: str) -> object:
        return await plane.batcher.infer([text])

    async def data_plane(text: str) -> object:
        return await plane.classify([text])

    for text in texts[:200]:  # warm-up: the session's first runs, the tokenizer's caches
        await plane.classify([text])
    cells: dict[str, list[Cell]] = {name: [] for name in
                                    ("tokenize", "tokenize + run", "batcher", "data plane", "bare hand-off")}
    for _ in range(rounds):
        cells["tokenize"].append(measure_calls(lambda t: classifier.tokenize([t]), texts))
        cells["tokenize + run"].append(measure_calls(run_alone, texts))
        cells["batcher"].append(await measure_awaits(batcher, texts))
        cells["data plane"].append(await measure_awaits(data_plane, texts))
        cells["bare hand-off"].append(await measure_awaits(bare_hand_off, texts))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = ROOT / "bench" / ".work"
    if args.model == "tiny":
        registry, model = work / "tiny-registry", "the tiny test model, one ONNX Runtime thread"
        ensure_tiny_registry(registry)
        os.environ.update(SERVICE_ENV)  # one ONNX Runtime thread, as bench_frontend serves it
    else:
        registry, model = work / "registry", "the benchmark's MiniLM-L6, the service's thread settings"
        ensure_model(registry)
    os.environ["TUNELOOP_REGISTRY"] = str(registry)
    out = args.out or ROOT / "bench" / "results" / ("inprocess.md" if args.model == "tiny" else "inprocess-minilm.md")

    from service.runtime import ServingRuntime
    from tuneloop.settings import get_settings

    runtime = ServingRuntime(get_settings())
    runtime.start()
    deadline = time.monotonic() + 120
    while not runtime.dataplane.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    texts = bench_texts()[: args.texts]
    try:
        cells = uvloop.run(measure(runtime.dataplane, texts, args.rounds))
    finally:
        runtime.stop()
    lines = [f"CPU time of the whole process per text (µs) and the p50 of a call's wall time (ms): {model}, one "
             f"text at a time ({args.texts} texts), median of {args.rounds} interleaved rounds (min–max beside it).",
             "", "| step | CPU µs per text | range | p50 ms | range |", "| --- | --- | --- | --- | --- |"]
    for name, values in cells.items():
        cpu, p50 = [v[0] for v in values], [v[1] for v in values]
        lines.append(f"| {name} | {statistics.median(cpu):.0f} | {min(cpu):.0f}–{max(cpu):.0f} | "
                     f"{statistics.median(p50):.3f} | {min(p50):.3f}–{max(p50):.3f} |")
    write_results(out, lines)


if __name__ == "__main__":
    main()
