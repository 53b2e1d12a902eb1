"""Overload: offered load well past capacity is refused early, not queued forever.

    .venv/bin/python bench/bench_overload.py [--registry PATH] [--duration 30] [--factor 4] [--queue-texts N]

Starts ``tuneloop serve`` (HTTP only), then, on POST /classify with one real sentence a request:
  capacity  a closed loop at concurrency 32 for a few seconds: the requests/s the service serves;
  overload  an open loop at ``--factor`` × that rate for ``--duration`` seconds: requests arrive on a fixed
            schedule whatever the answers (a closed loop would slow down with the server and never
            overload it), each on an idle connection or a new one. Admitted requests (200) and refused ones
            (503, with Retry-After) are counted per second; latency runs from each request's scheduled
            arrival, so a load generator that falls behind shows up as latency, not as less load;
  memory    the server's RSS (every process of it, from /proc), once a second;
  recovery  the closed loop at concurrency 32 again as soon as the overload stops, second by second: how
            long until it serves at the capacity measured before.
Writes bench/results/overload.md (or --out). The load generator is a minimal HTTP/1.1 client on asyncio
protocols (no wrk here, and httpx costs several times the CPU per request on the same two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import bench_texts, ensure_model  # noqa: E402
from service.batching import BatchLimits  # noqa: E402
from tests.server_process import ServerProcess, process_tree, tree_cpu_seconds  # noqa: E402
from tuneloop.settings import get_settings  # noqa: E402

CONCURRENCY = 32
MAX_CONNECTIONS = 8000  # open-loop connections at most; an arrival finding none is counted as not sent
Done = Callable[[int, float], None]  # (status, seconds since the scheduled arrival); status 0: no answer


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; answers must carry a Content-Length."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiting: tuple[Done, float] | None = None
        self.status, self.length, self.keep = 0, -1, True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, done: Done, scheduled: float) -> None:
        self.waiting = (done, scheduled)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.length < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            self.status = int(head[9:12])
            self.length = int(re.search(rb"content-length: *(\d+)", head).group(1))
            self.keep = b"connection: close" not in head
            self.buffer = self.buffer[end + 4:]
        if len(self.buffer) >= self.length:
            (done, scheduled), self.waiting = self.waiting, None
            if self.status != 200 and len(self.pool.errors) < 5 and self.status not in self.pool.errors:
                self.pool.errors[self.status] = self.buffer[:self.length].decode(errors="replace")
            self.buffer, self.length = b"", -1
            done(self.status, time.perf_counter() - scheduled)  # may send the next request at once
            if self.keep and self.waiting is None:
                self.pool.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.open -= 1
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.waiting is not None:
            (done, scheduled), self.waiting = self.waiting, None
            done(0, time.perf_counter() - scheduled)


@dataclass
class Pool:
    host: str
    port: int
    idle: list[Connection] = field(default_factory=list)
    open: int = 0
    errors: dict[int, str] = field(default_factory=dict)  # the first answer of each status other than 200

    async def connect(self) -> Connection:
        self.open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(lambda: Connection(self), self.host,
                                                                         self.port)
        except OSError:
            self.open -= 1
            raise
        return conn

    def send(self, request: bytes, done: Done, scheduled: float) -> bool:
        """Send on an idle connection, or on a new one; False when none is idle and none may be opened."""
        if self.idle:
            self.idle.pop().send(request, done, scheduled)
            return True
        if self.open >= MAX_CONNECTIONS:
            return False

        async def fresh() -> None:
            try:
                conn = await self.connect()
            except OSError:
                done(0, time.perf_counter() - scheduled)
                return
            conn.send(request, done, scheduled)

        asyncio.ensure_future(fresh())
        return True

    def close(self) -> None:
        for conn in list(self.idle):
            conn.transport.close()


def requests_for(texts: list[str]) -> list[bytes]:
    out = []
    for text in texts:
        body = json.dumps({"texts": [text]}).encode()
        out.append(b"POST /classify HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return out


@dataclass
class Window:
    """What happened in one second: answers by status, latencies of the admitted (200) ones."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)  # how long a 503 took
    not_sent: int = 0

    def add(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.latencies.append(seconds)
        elif status == 503:
            self.refusals.append(seconds)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q)) if latencies else float("nan")


async def closed_loop(host: str, port: int, requests: list[bytes], seconds: float) -> list[Window]:
    """CONCURRENCY clients, each sending its next request as soon as its answer comes, for ``seconds``;
    one Window a second, by when each answer came."""
    pool = Pool(host, port)
    windows = [Window() for _ in range(int(np.ceil(seconds)))]
    conns = [await pool.connect() for _ in range(CONCURRENCY)]
    finished = asyncio.get_running_loop().create_future()
    state = {"next": 0, "running": CONCURRENCY}
    began = time.perf_counter()

    def fire(conn: Connection) -> None:
        def done(status: int, latency: float) -> None:
            elapsed = time.perf_counter() - began
            if elapsed < seconds:
                windows[int(elapsed)].add(status, latency)
                if status:  # 0: the connection is gone
                    fire(conn)
                    return
            state["running"] -= 1
            if state["running"] == 0:
                finished.set_result(None)

        conn.send(requests[state["next"] % len(requests)], done, time.perf_counter())
        state["next"] += 1

    for conn in conns:
        fire(conn)
    await finished
    pool.close()
    return windows


async def open_loop(pool: Pool, requests: list[bytes], rate: float,
                    seconds: float) -> tuple[list[Window], asyncio.Future]:
    """Requests arrive every 1/rate s for ``seconds``, whatever the answers; one Window a second, by
    arrival. Returns the windows as soon as the last request is sent, and a future done once every request
    has its answer."""
    windows = [Window() for _ in range(int(np.ceil(seconds)))]
    answered = asyncio.get_running_loop().create_future()
    state = {"outstanding": 0, "sending": True}

    def done_for(window: Window) -> Done:
        def done(status: int, latency: float) -> None:
            window.add(status, latency)
            state["outstanding"] -= 1
            if not state["outstanding"] and not state["sending"] and not answered.done():
                answered.set_result(None)
        return done

    began = time.perf_counter()
    sent = 0
    while (now := time.perf_counter() - began) < seconds:
        while sent < int(now * rate):
            window = windows[min(int(sent / rate), len(windows) - 1)]
            state["outstanding"] += 1
            if not pool.send(requests[sent % len(requests)], done_for(window), began + sent / rate):
                state["outstanding"] -= 1
                window.not_sent += 1
            sent += 1
        await asyncio.sleep(0.001)
    state["sending"] = False
    if not state["outstanding"]:
        answered.set_result(None)
    return windows, answered


def rss_mib(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(found.group(1)) if found else 0
    return total / 1024


def queued_texts(url: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return float("nan")
    found = re.search(r"^tuneloop_queued_texts(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def summary(windows: list[Window]) -> dict[str, float]:
    latencies = [x for w in windows for x in w.latencies]
    refusals = [x for w in windows for x in w.refusals]
    answered = sum(sum(w.statuses.values()) for w in windows)
    refused = sum(w.statuses.get(503, 0) for w in windows)
    other = answered - refused - sum(w.ok for w in windows)
    return {"ok": sum(w.ok for w in windows), "refused": refused, "other": other, "answered": answered,
            "not_sent": sum(w.not_sent for w in windows), "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99), "max_ms": max(latencies, default=float("nan")) * 1000,
            "refused_p50_ms": percentile_ms(refusals, 50), "refused_p99_ms": percentile_ms(refusals, 99)}


async def sample_server(server: ServerProcess, samples: list[tuple[float, float, float]]) -> None:
    """(seconds since the overload began, server RSS MiB, queued texts) once a second, until cancelled."""
    began, loop = time.perf_counter(), asyncio.get_running_loop()
    while True:
        at, rss = time.perf_counter() - began, rss_mib(server.proc.pid)
        # /metrics off the loop: a slow answer must not hold up the arrival schedule.
        samples.append((at, rss, await loop.run_in_executor(None, queued_texts, server.url)))
        await asyncio.sleep(max(0.0, began + len(samples) - time.perf_counter()))


async def run(server: ServerProcess, requests: list[bytes], args: argparse.Namespace) -> dict:
    host, port = "127.0.0.1", server.http_port
    await closed_loop(host, port, requests, 3)  # warm-up
    cpu_before = tree_cpu_seconds(server.proc.pid)
    capacity_windows = await closed_loop(host, port, requests, args.capacity_seconds)
    capacity = summary(capacity_windows)
    capacity["cpu_ms"] = (tree_cpu_seconds(server.proc.pid) - cpu_before) / max(1, capacity["ok"]) * 1000
    capacity_rps = capacity["ok"] / args.capacity_seconds
    rate = args.rate or args.factor * capacity_rps
    print(f"capacity {capacity_rps:.0f} req/s at c={CONCURRENCY}; offering {rate:.0f} req/s for "
          f"{args.duration} s", flush=True)

    rss_before = rss_mib(server.proc.pid)
    samples: list[tuple[float, float, float]] = []
    sampler = asyncio.ensure_future(sample_server(server, samples))
    cpu_before, client_before = tree_cpu_seconds(server.proc.pid), time.process_time()
    pool = Pool(host, port)
    overload_windows, answered = await open_loop(pool, requests, rate, args.duration)
    # Recovery starts as soon as the arrivals stop, while what the overload left queued is still answered.
    recovery_windows = await closed_loop(host, port, requests, args.recovery_seconds)
    await asyncio.wait_for(answered, 120)
    sampler.cancel()
    overload_cpu = tree_cpu_seconds(server.proc.pid) - cpu_before
    client_cpu = time.process_time() - client_before
    pool.close()
    return {"capacity": capacity, "capacity_rps": capacity_rps, "rate": rate,
            "overload": summary(overload_windows), "overload_windows": overload_windows,
            "overload_cpu_s": overload_cpu, "client_cpu_s": client_cpu, "samples": samples,
            "rss_before": rss_before, "rss_after": rss_mib(server.proc.pid),
            "recovery_windows": recovery_windows, "errors": pool.errors}


def phase_row(name: str, offered: str, admitted_rps: float, refused: str, other: str, stats: dict) -> str:
    cells = [name, offered, f"{admitted_rps:.0f}", refused, other,
             *(f"{stats[key]:.0f}" for key in ("p50_ms", "p99_ms", "max_ms"))]
    return "| " + " | ".join(cells) + " |"


def report(result: dict, args: argparse.Namespace, queue_texts: int) -> str:
    over, cap, capacity_rps = result["overload"], result["capacity"], result["capacity_rps"]
    offered = over["answered"] + over["not_sent"]
    recovery = result["recovery_windows"]
    full = next((i + 1 for i, w in enumerate(recovery) if w.ok >= 0.9 * capacity_rps), None)
    during = [rss for at, rss, _ in result["samples"] if at < args.duration]
    admitted_cpu = result["overload_cpu_s"] / max(1, over["ok"] + sum(w.ok for w in recovery)) * 1000
    p99_s = over["p99_ms"] / 1000
    lines = [
        f"{os.cpu_count()} cores, one text per request (real sentences), POST /classify, 1 worker, "
        f"serving.max_queue_texts={queue_texts}{''.join(f', {e}' for e in args.env)}; load generator on the "
        "same machine.",
        "",
        "| phase | offered req/s | admitted (200) req/s | refused (503) | other | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        phase_row(f"capacity: closed loop, c={CONCURRENCY}, {args.capacity_seconds} s", "—", capacity_rps,
                  str(cap["refused"]), str(cap["other"]), cap),
        phase_row(f"overload: open loop, {result['rate'] / capacity_rps:.1f}×, {args.duration} s",
                  f"{offered / args.duration:.0f}", over["ok"] / args.duration,
                  f"{over['refused'] / max(1, offered):.0%}",
                  f"{over['other']} (+{over['not_sent']} not sent)", over),
        "",
        f"- Admitted p99 under overload: {p99_s:.1f} s, {over['p99_ms'] / cap['p99_ms']:.1f}× the p99 at "
        f"capacity. The queue's bound: {queue_texts} texts / {capacity_rps:.0f} texts/s = "
        f"{queue_texts / capacity_rps:.1f} s of waiting, then the request's own batch.",
        f"- A refusal (503) took {over['refused_p50_ms']:.0f} ms at the median, {over['refused_p99_ms']:.0f} "
        f"ms at p99. Answers other than 200, the first of each status: {result['errors']}",
        f"- Server CPU per admitted request: {cap['cpu_ms']:.2f} ms at capacity; {admitted_cpu:.2f} ms from "
        f"the overload's start to the recovery's end, refusals included. Load generator: "
        f"{result['client_cpu_s']:.1f} CPU-s over that span.",
        f"- Server RSS: {result['rss_before']:.0f} MiB before; during the overload {min(during):.0f}–"
        f"{max(during):.0f} MiB, {during[len(during) // 2]:.0f} MiB at its middle and {during[-1]:.0f} MiB "
        f"at its end; {result['rss_after']:.0f} MiB after the recovery.",
        f"- Recovery (closed loop, c={CONCURRENCY}, from the moment the arrivals stop): "
        + (f"≥ 90% of capacity from second {full}." if full else "not at 90% of capacity within the window."),
        "",
        "| second | admitted | refused | admitted p99 ms | queued texts | server RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    samples = {int(at): (rss, queued) for at, rss, queued in result["samples"]}
    nan = (float("nan"), float("nan"))
    for i, w in enumerate(result["overload_windows"]):
        rss, queued = samples.get(i, nan)
        p99, refused = percentile_ms(w.latencies, 99), w.statuses.get(503, 0)
        lines.append(f"| {i + 1} | {w.ok} | {refused} | {p99:.0f} | {queued:.0f} | {rss:.0f} |")
    lines += ["", "| second after | recovery req/s | p99 ms | queued texts |", "| --- | --- | --- | --- |"]
    for i, w in enumerate(recovery):
        _, queued = samples.get(args.duration + i, nan)
        lines.append(f"| {i + 1} | {w.ok} | {percentile_ms(w.latencies, 99):.0f} | {queued:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=ROOT / "bench" / ".work" / "registry")
    parser.add_argument("--duration", type=int, default=30, help="seconds of overload")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load as a multiple of capacity")
    parser.add_argument("--rate", type=float, default=None,
                        help="offered requests/s, instead of --factor × capacity (to compare servers at one load)")
    parser.add_argument("--capacity-seconds", type=int, default=5)
    parser.add_argument("--recovery-seconds", type=int, default=10)
    parser.add_argument("--queue-texts", type=int, default=None,
                        help="serving.max_queue_texts for the server (default: the settings')")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for the server, e.g. TUNELOOP_SERVING__ORT_SPINNING=off")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.md")
    args = parser.parse_args()
    ensure_model(args.registry)
    requests = requests_for(bench_texts())
    queue_texts = args.queue_texts or BatchLimits.from_settings(get_settings().serving).max_queue_texts
    env = {"TUNELOOP_SERVING__MAX_QUEUE_TEXTS": str(queue_texts), **dict(e.split("=", 1) for e in args.env)}
    work = Path(tempfile.mkdtemp(prefix="tuneloop-overload-"))
    with ServerProcess(args.registry, work / "service.log", grpc=False, env=env, poll_interval_s=None) as server:
        result = asyncio.run(run(server, requests, args))
    table = report(result, args, queue_texts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
