"""Where a lone request's CPU goes inside the serving process, without sockets: the front end's budget.

    .venv/bin/python bench/bench_inprocess.py [--registry PATH] [--texts 2000] [--rounds 3]

On the test suite's tiny model (one ONNX Runtime thread, event log off), one text at a time, CPU time of the
whole process per text, median of interleaved rounds:
  tokenize            the Rust tokenizer alone
  tokenize + run      tokenizing and ``session.run``, nothing else: what inference costs a lone text
  batcher             ``MicroBatcher.infer`` awaited on a uvloop loop: the hand-off to the batcher thread, the
                      batch's bookkeeping and metrics, the answer back on the loop
  data plane          ``DataPlane.classify``: validation and the per-text predictions on top
  bare hand-off       a future handed to a bare thread and set back through ``call_soon_threadsafe``: the
                      floor of any thread hand-off on this machine
Writes bench/results/inprocess.md. bench_frontend.py measures the same path through HTTP and gRPC servers.
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

os.environ.update({"TUNELOOP_KAFKA__ENABLED": "false", "TUNELOOP_SERVING__INTRA_OP_THREADS": "1",
                   "TUNELOOP_SERVING__GRPC_PORT": "0"})

import uvloop  # noqa: E402

from bench.bench_frontend import ensure_tiny_registry  # noqa: E402
from bench.bench_serving import bench_texts, write_results  # noqa: E402


def cpu_per_call(run: Callable[[str], object], texts: list[str]) -> float:
    started = time.process_time()
    for text in texts:
        run(text)
    return (time.process_time() - started) / len(texts) * 1e6


async def cpu_per_await(run: Callable[[str], Awaitable[object]], texts: list[str]) -> float:
    started = time.process_time()
    for text in texts:
        await run(text)
    return (time.process_time() - started) / len(texts) * 1e6


def start_bare_worker() -> queue.SimpleQueue:
    handed: queue.SimpleQueue = queue.SimpleQueue()

    def answer() -> None:
        while True:
            future, loop = handed.get()
            loop.call_soon_threadsafe(future.set_result, None)

    threading.Thread(target=answer, daemon=True).start()
    return handed


async def measure(plane, texts: list[str], rounds: int) -> dict[str, list[float]]:
    classifier = plane.manager.current.classifier
    handed = start_bare_worker()
    loop = asyncio.get_running_loop()

    def run_alone(text: str) -> None:
        for _ in classifier.run_buckets(classifier.tokenize([text]), 1):
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
    cells: dict[str, list[float]] = {name: [] for name in
                                     ("tokenize", "tokenize + run", "batcher", "data plane", "bare hand-off")}
    for _ in range(rounds):
        cells["tokenize"].append(cpu_per_call(lambda t: classifier.tokenize([t]), texts))
        cells["tokenize + run"].append(cpu_per_call(run_alone, texts))
        cells["batcher"].append(await cpu_per_await(batcher, texts))
        cells["data plane"].append(await cpu_per_await(data_plane, texts))
        cells["bare hand-off"].append(await cpu_per_await(bare_hand_off, texts))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "bench" / ".work" / "tiny-registry")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inprocess.md")
    args = parser.parse_args()
    ensure_tiny_registry(args.registry)
    os.environ["TUNELOOP_REGISTRY"] = str(args.registry)

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
    lines = [f"CPU time of the whole process per text, µs: the tiny test model, one ONNX Runtime thread, one text "
             f"at a time ({args.texts} texts), median of {args.rounds} interleaved rounds (min–max beside it).",
             "", "| step | µs per text | range |", "| --- | --- | --- |"]
    for name, values in cells.items():
        lines.append(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f}–{max(values):.0f} |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
