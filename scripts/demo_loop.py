"""The loop so far, end to end on this machine: serve the production model, log its traffic to Kafka,
send amazon reviews and then restaurant reviews, give feedback, and watch the monitor raise drift.

    .venv/bin/python scripts/demo_loop.py --registry .demo/registry     (make demo runs it after training)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sentiment-labelled-sentences"
console = Console()


FILES = {"amazon": "amazon_cells_labelled.txt", "yelp": "yelp_labelled.txt", "imdb": "imdb_labelled.txt"}


def sentences(name: str) -> list[tuple[str, str]]:
    rows = []
    for line in (DATA / FILES[name]).read_text(encoding="utf-8").splitlines():
        text, _, label = line.rpartition("\t")
        rows.append((text.strip(), label.strip()))
    random.Random(0).shuffle(rows)
    return rows


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def gauge(url: str, name: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    return {labels: float(value) for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", type=Path, default=ROOT / ".demo" / "registry")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    args = parser.parse_args()
    tuneloop = str(Path(sys.executable).parent / "tuneloop")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNELOOP_REGISTRY": str(args.registry), "TUNELOOP_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
           "TUNELOOP_SPOOL_DIR": str(work / "spool"), "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}
    procs = []
    try:
        procs.append(start([tuneloop, "broker", "--port", "19092"], work / "broker.log", env))
        procs.append(start([tuneloop, "serve", "--host", "127.0.0.1", "--port", "13000", "--grpc-port", "18001"],
                           work / "service.log", env))
        procs.append(start([tuneloop, "monitor", "--host", "127.0.0.1", "--port", "18700"], work / "monitor.log", env))
        wait_http("http://127.0.0.1:13000/readyz")
        wait_http("http://127.0.0.1:18700/healthz")
        console.print("[bold]service, broker and monitor are up[/] — service :13000 (gRPC :18001), monitor :18700")

        amazon, yelp = sentences("amazon"), sentences("yelp")
        phases = [("amazon (the model's own domain)", amazon[:600]), ("yelp (restaurant reviews: drift)", yelp[:600])]
        with httpx.Client(base_url="http://127.0.0.1:13000", timeout=30) as http:
            for title, rows in phases:
                correct = 0
                for start_ in range(0, len(rows), 10):
                    chunk = rows[start_:start_ + 10]
                    body = http.post("/classify", json={"texts": [t for t, _ in chunk]}).json()
                    feedback = []
                    for (text, label), p in zip(chunk, body["predictions"]):
                        correct += p["label"] == label
                        feedback.append({"request_id": p["request_id"], "label": label, "source": "demo"})
                    http.post("/feedback", json={"feedback": feedback})
                console.print(f"sent {len(rows)} {title}: accuracy from feedback {correct / len(rows):.3f} "
                              f"(model {body['model_name']} {body['model_version']})")
                time.sleep(8)  # let the monitor read and evaluate
                table = Table(title=f"drift after {title}")
                for col in ("signal", "score", "threshold", "drift"):
                    table.add_column(col)
                scores = gauge("http://127.0.0.1:18700/metrics", "tuneloop_drift_score")
                thresholds = gauge("http://127.0.0.1:18700/metrics", "tuneloop_drift_threshold")
                flags = gauge("http://127.0.0.1:18700/metrics", "tuneloop_drift_detected")
                for labels, score in sorted(scores.items()):
                    signal_name = re.search(r'signal="([^"]+)"', labels).group(1)
                    table.add_row(signal_name, f"{score:.3f}", f"{thresholds.get(labels, float('nan')):.3f}",
                                  "[red]yes[/]" if flags.get(labels) else "no")
                console.print(table)
        reports = httpx.get("http://127.0.0.1:18700/reports", params={"format": "json"}).json()
        console.print(f"{len(reports)} Evidently reports at http://127.0.0.1:18700/reports")
        metrics = httpx.get("http://127.0.0.1:13000/metrics").text
        produced = sum(float(v) for v in re.findall(r"^tuneloop_events_produced_total\{[^}]*\} (\S+)$", metrics, re.M))
        console.print(f"events acknowledged by the broker: {produced:.0f}")
        (work / "summary.json").write_text(json.dumps({"reports": len(reports), "events_produced": produced}))
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
