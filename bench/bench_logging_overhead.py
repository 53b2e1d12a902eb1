"""What logging every prediction to Kafka costs the service, and what a broker outage costs it.

    .venv/bin/python bench/bench_logging_overhead.py [--registry PATH] [--duration 8] [--rounds 3]

Four services run at once on the same model, measured in interleaved rounds (median kept), load from
wrk, one text per request:
  off          the event log off
  on           every prediction (text + float16 embedding) logged to a real Tansu broker
  shipped      logging on, the producer in a shipper process beside the service (kafka.shipper=process)
  broker down  logging on, no broker reachable: every event goes to the spool
Writes bench/results/logging_overhead.md. (bench_events.py measures the spool and producer alone.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_serving import (bench_texts, ensure_model, interleaved_rounds, run_wrk, with_cpu,  # noqa: E402
                                 write_results)
from tests.server_process import ServerProcess  # noqa: E402
from tuneloop.events.broker import free_port  # noqa: E402
from tuneloop.events.broker import TansuBroker  # noqa: E402

CONCURRENCY = (8, 32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=ROOT / "bench" / ".work" / "registry")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logging_overhead.md")
    args = parser.parse_args()
    ensure_model(args.registry)
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-logging-"))
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"texts": [t]}) + "\n" for t in bench_texts()))

    broker = TansuBroker(log_path=work / "tansu.log").start()
    on = {"TUNELOOP_KAFKA__ENABLED": "true", "TUNELOOP_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
          "TUNELOOP_SPOOL_DIR": str(work / "spool-on")}
    shipped = {**on, "TUNELOOP_SPOOL_DIR": str(work / "spool-shipped"), "TUNELOOP_KAFKA__SHIPPER": "process"}
    down = {"TUNELOOP_KAFKA__ENABLED": "true", "TUNELOOP_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "TUNELOOP_SPOOL_DIR": str(work / "spool-down")}
    servers = {
        "off": ServerProcess(args.registry, work / "off.log", grpc=False, poll_interval_s=None).start(),
        "on": ServerProcess(args.registry, work / "on.log", grpc=False, env=on, poll_interval_s=None).start(),
        "shipped": ServerProcess(args.registry, work / "shipped.log", grpc=False, env=shipped,
                                 poll_interval_s=None).start(),
        "broker down": ServerProcess(args.registry, work / "down.log", grpc=False, env=down, poll_interval_s=None).start(),
    }

    measure = {name: with_cpu(lambda c, d, url=server.url: run_wrk(f"{url}/classify", bodies, c, d),
                              {"service": server.proc.pid, "broker": broker.proc.pid})
               for name, server in servers.items()}
    try:
        rows = interleaved_rounds(measure, CONCURRENCY, args.rounds, args.duration)
    finally:
        for server in servers.values():
            server.stop()
        broker.stop()
    lines = [
        f"The service with the event log off, on (real Tansu broker), on with the producer in a shipper process "
        f"(shipped; its CPU counts in the service's), and on with the broker down (all spooled); one text per "
        f"request, {args.duration} s per cell, median of {args.rounds} interleaved rounds, wrk on the same "
        "2-core machine as the four services.",
        "",
        "| event log | concurrency | requests/s | p50 ms | p99 ms | errors | × off | service CPU ms/request "
        "| broker CPU ms/request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in servers:
        for c in CONCURRENCY:
            r = rows[name][c]
            lines.append(f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{int(r['errors'])} | {r['rps'] / rows['off'][c]['rps']:.2f} | {r['service_cpu_ms']:.2f} | "
                         f"{r['broker_cpu_ms']:.3f} |")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
