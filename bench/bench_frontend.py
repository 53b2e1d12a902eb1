"""The front end's own cost: CPU per request with inference nearly free, against the floor of each stack.

    .venv/bin/python bench/bench_frontend.py [--duration 6] [--rounds 3] [--profile-seconds 10]

The service serves the test suite's tiny model (2 layers, 32 wide: a batch runs in well under a millisecond),
without the event log, so what it spends per request is its front end: HTTP or gRPC, parsing and validation,
the hand-off to the batcher and back, tokenising, metrics, the answer. Beside it run the floors
(bench/floor_servers.py): a bare Starlette app under uvicorn and a bare grpc.aio servicer that parse the same
requests and answer in the same shapes. Variants, measured in interleaved rounds (median kept):

  classify / floor-classify      POST /classify {"texts": [one text]}   (wrk)
  oip-rest / floor-oip-rest      POST /v2/models/sentiment/infer, one BYTES input   (wrk)
  grpc     / floor-grpc          ModelInfer, one BYTES input   (a grpc.aio client in this process)
  floor-bentoml-classify         the Starlette floor mounted in a BentoML service: BentoML's own share

Then py-spy samples the service's worker for ``--profile-seconds`` under each transport's load at
concurrency 32, and the functions with the most samples of their own are listed. Writes
bench/results/frontend.md (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import (Measure, bench_texts, grpc_load, interleaved_rounds, run_wrk, start_bento,  # noqa: E402
                                 stop, with_cpu, write_results)
from tests.model_versions import approve_and_promote, train_tiny_version, write_small_amazon, write_tiny_bert  # noqa: E402
from tests.server_process import ServerProcess, process_cpu_seconds, process_tree  # noqa: E402
from tuneloop.events.broker import free_port  # noqa: E402
from tuneloop.registry import Registry  # noqa: E402

CONCURRENCY = (1, 8, 32)
PAIRS = {"classify": "floor-classify", "oip-rest": "floor-oip-rest", "grpc": "floor-grpc"}
# The tiny model gains nothing from a second ONNX Runtime thread, which only adds its wake-ups to each run.
SERVICE_ENV = {"TUNELOOP_SERVING__INTRA_OP_THREADS": "1"}
MODEL_NAME = "sentiment"


def ensure_tiny_registry(root: Path) -> None:
    if root.exists() and Registry(root).production():
        return
    work = Path(tempfile.mkdtemp(prefix="tuneloop-tiny-"))
    base = write_tiny_bert(work / "tiny-bert")
    version = train_tiny_version(root, write_small_amazon(work / "small_amazon.txt"), base)
    approve_and_promote(root, version)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"floor server exited with {proc.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def start_floor(args: list[str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    wait_for_port(port, proc)
    return proc


def busiest_process(root: int, load: Measure) -> int:
    """The process of ``root``'s tree that spends the most CPU under ``load``: the BentoML worker."""
    pids = process_tree(root)
    before = {pid: process_cpu_seconds(pid) for pid in pids}
    load(32, 2)
    return max(pids, key=lambda pid: process_cpu_seconds(pid) - before[pid])


def profile(pid: int, load: Measure, seconds: int, out: Path) -> list[tuple[str, float, float]]:
    """py-spy's samples of ``pid`` while ``load`` runs at concurrency 32: (function, own %, with callees %)
    of the functions with the most samples of their own."""
    spy = subprocess.Popen([shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy", "record",
                            "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--nonblocking",
                            "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    loader = threading.Thread(target=load, args=(32, seconds + 1))
    loader.start()
    spy.wait()
    loader.join()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].rsplit("/", 1)[-1] for frame in stack.split(";")]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return [(frame, 100 * n / total, 100 * inclusive[frame] / total) for frame, n in own.most_common(15)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=ROOT / "bench" / ".work" / "tiny-registry")
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frontend.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the HTTP load: apt-get install wrk")
    ensure_tiny_registry(args.registry)
    texts = bench_texts()
    work = Path(tempfile.mkdtemp(prefix="tuneloop-frontend-"))
    classify_bodies, oip_bodies = work / "classify.jsonl", work / "oip.jsonl"
    classify_bodies.write_text("".join(json.dumps({"texts": [t]}) + "\n" for t in texts))
    oip_bodies.write_text("".join(json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                          "data": [t]}]}) + "\n" for t in texts))
    oip_path = f"/v2/models/{MODEL_NAME}/infer"

    service = ServerProcess(args.registry, work / "service.log", env=SERVICE_ENV, poll_interval_s=None).start()
    bento_floor, bento_floor_url = start_bento("bench.floor_servers:BentoFloor", {}, work / "floor-bentoml.log")
    http_port, grpc_port = free_port(), free_port()
    floors = [
        start_floor(["-m", "uvicorn", "bench.floor_servers:http_app", "--host", "127.0.0.1", "--port", str(http_port),
                     "--no-access-log", "--log-level", "warning"], http_port, work / "floor-http.log"),
        start_floor(["-m", "bench.floor_servers", "grpc", "--port", str(grpc_port)], grpc_port, work / "floor-grpc.log"),
    ]
    floor_http = f"http://127.0.0.1:{http_port}"

    def http(url: str, bodies: Path) -> Measure:
        return lambda c, d: run_wrk(url, bodies, c, d)

    def grpc(port: int) -> Measure:
        return lambda c, d: asyncio.run(grpc_load(port, MODEL_NAME, texts, c, d))

    loads = {
        "classify": (http(f"{service.url}/classify", classify_bodies), service.proc.pid),
        "floor-classify": (http(f"{floor_http}/classify", classify_bodies), floors[0].pid),
        "floor-bentoml-classify": (http(bento_floor_url, classify_bodies), bento_floor.pid),
        "oip-rest": (http(f"{service.url}{oip_path}", oip_bodies), service.proc.pid),
        "floor-oip-rest": (http(f"{floor_http}{oip_path}", oip_bodies), floors[0].pid),
        "grpc": (grpc(service.grpc_port), service.proc.pid),
        "floor-grpc": (grpc(grpc_port), floors[1].pid),
    }
    profiles: dict[str, list[tuple[str, float, float]]] = {}
    try:
        measure = {name: with_cpu(load, {"server": pid}) for name, (load, pid) in loads.items()}
        rows = interleaved_rounds(measure, CONCURRENCY, args.rounds, args.duration)
        worker = busiest_process(service.proc.pid, loads["classify"][0])
        for name in PAIRS:
            print(f"profiling {name} …", flush=True)
            profiles[name] = profile(worker, loads[name][0], args.profile_seconds, work / f"{name}.spy")
    finally:
        service.stop()
        stop(bento_floor)
        for proc in floors:
            proc.terminate()
            proc.wait(timeout=30)

    lines = [
        f"The service on the test suite's tiny model (2 layers, 32 wide), event log off, against bare servers that "
        f"parse the same requests and answer in the same shapes (bench/floor_servers.py); one text per request, "
        f"{args.duration} s per cell, median of {args.rounds} interleaved rounds; load from wrk (HTTP) and a "
        f"grpc.aio client, on the same {os.cpu_count()}-core machine. Server CPU: CPU seconds of the "
        "server's processes per request. × floor: the service's server CPU over its floor's, same transport and "
        "concurrency.",
        "",
        "| path | concurrency | requests/s | p50 ms | p99 ms | errors | server CPU ms/req | × floor CPU | client CPU ms/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    floor_of = {**PAIRS, **{floor: floor for floor in PAIRS.values()}, "floor-bentoml-classify": "floor-classify"}
    for path in loads:
        for c in CONCURRENCY:
            r = rows[path][c]
            floor = rows[floor_of[path]][c]
            lines.append(f"| {path} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {int(r['errors'])} "
                         f"| {r['server_cpu_ms']:.3f} | {r['server_cpu_ms'] / floor['server_cpu_ms']:.2f} "
                         f"| {r['client_cpu_ms']:.3f} |")
    for name, top in profiles.items():
        lines += ["", f"py-spy, the service's worker under {name} load at concurrency 32, {args.profile_seconds} s "
                  "(own: samples in the function itself; total: with what it calls; % of the worker's samples):", "",
                  "| function (file) | own % | total % |", "| --- | --- | --- |"]
        lines += [f"| `{frame}` | {own_pct:.1f} | {total_pct:.1f} |" for frame, own_pct, total_pct in top]
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
