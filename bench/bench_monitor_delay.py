"""Drift detection delay at 100, 1,000 and 10,000 prediction events/s, replayed into a real broker.

    .venv/bin/python bench/bench_monitor_delay.py [--rates 100 1000 10000] [--window-seconds 20]
                                                  [--out bench/results/monitor-delay.md]

For each rate: a Tansu broker on loopback (2 partitions), producer processes sending prediction events at that
rate the way the service does (a CloudEvent per prediction, lz4 batches, timestamped when sent), and one monitor
(``DriftMonitor`` + ``ConsumeLoop`` on an ``EventConsumer``, the shipped settings but for the window span) in
this process. The traffic is in-domain for 1.5 windows, then switches to a shifted domain for 2 windows. The
delay is the wall time from the first shifted event sent to the monitor's ``drift_started``; the bar is two
windows. Also recorded: verdicts before the switch that raised drift (false alarms), the rate the producers
achieved, the largest consumer lag seen.

The data is synthetic (384-wide embeddings, MiniLM's width, so that decoding costs what it costs live; the
shifted domain moves the embeddings and uses other words): this measures timing (consumption, windows closing,
evaluation), not the signals' power, which bench/bench_drift.py measures on the served model. Windows are
shorter than the shipped 60 s so that a run takes minutes; the delay scales with the window.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitoring.consume import ConsumeLoop  # noqa: E402
from monitoring.monitor import DriftMonitor, Evaluation  # noqa: E402
from monitoring.reference import reference_from_arrays  # noqa: E402
from tuneloop.events.broker import TansuBroker  # noqa: E402
from tuneloop.events.client_config import ensure_topics  # noqa: E402
from tuneloop.events.consumer import EventConsumer  # noqa: E402
from tuneloop.settings import KafkaSettings, MonitorSettings  # noqa: E402

LABELS = ["negative", "positive"]
WIDTH = 384
WORDS = "good bad phone battery screen great poor quality price works broke love hate sound case charger".split()
DOMAIN_WORDS = "pasta waiter movie plot actor dessert cinema service menu script".split()
PRODUCERS = {100: 1, 1000: 1, 10000: 2}  # one kafka-python producer thread sends ~6,000 events/s here


def rows(n: int, rng: np.random.Generator, shift: float, words: list[str]) -> dict[str, np.ndarray]:
    embeddings = rng.normal(shift, 1.0, size=(n, WIDTH)).astype(np.float32)
    logits = embeddings[:, :2] * 2
    probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    texts = np.array([" ".join(rng.choice(words, size=int(rng.integers(3, 15)))) for _ in range(n)], dtype=str)
    return {"embeddings": embeddings, "probabilities": probabilities, "predictions": probabilities.argmax(1),
            "texts": texts}


def produce(bootstrap: str, topic: str, rate: float, start: float, switch: float, end: float, seed: int,
            sent_out) -> None:
    """A producer process: events at ``rate``/s from ``start`` to ``end`` (wall clock), shifted from ``switch``.

    The body is built with orjson in exactly the layout ``tuneloop.events.envelope.wrap`` writes, timestamped
    when sent, as the service's sender does."""
    import orjson
    from kafka import KafkaProducer

    from tuneloop.events.schemas import encode_embedding

    rng = np.random.default_rng(seed)
    pools = []
    for shift, words in ((0.0, WORDS), (0.5, DOMAIN_WORDS)):
        r = rows(512, rng, shift, words)
        pools.append([{"model_name": "sentiment", "model_version": "v1", "input_mode": "text",
                       "text": str(r["texts"][i]), "text_sha256": None, "text_length": len(str(r["texts"][i])),
                       "label": LABELS[int(r["predictions"][i])],
                       "probabilities": {n: float(p) for n, p in zip(LABELS, r["probabilities"][i], strict=True)},
                       "embedding": encode_embedding(r["embeddings"][i]), "latency_ms": 3.0, "truncated": False}
                      for i in range(512)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="lz4", linger_ms=100,
                             batch_size=1 << 20)
    sent = 0
    while time.time() < start:
        time.sleep(0.001)
    while True:
        now = time.time()
        if now >= end:
            break
        due = int((now - start) * rate) + 1
        pool = pools[1] if now >= switch else pools[0]
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
        while sent < due:
            request_id = uuid.uuid4().hex
            data = {**pool[sent % 512], "request_id": request_id, "timestamp": stamp}
            producer.send(topic, key=request_id.encode(), value=orjson.dumps({
                "type": "io.tuneloop.prediction.v1", "source": "bench", "datacontenttype": "application/json",
                "specversion": "1.0", "id": str(uuid.uuid4()), "time": stamp, "data": data}))
            sent += 1
        time.sleep(0.002)
    producer.flush(timeout=60)
    producer.close()
    sent_out.put(sent)


class DriftClock:
    """Where the monitor announces drift (its event sink): when it did, and on which window."""

    def __init__(self) -> None:
        self.started: list[tuple[float, Evaluation]] = []

    def drift_started(self, model_name: str | None, version: str, evaluation: Evaluation) -> None:
        self.started.append((time.time(), evaluation))

    def drift_ended(self, model_name: str | None, version: str, evaluation: Evaluation) -> None:
        pass


def run_rate(rate: int, window_s: float, broker: TansuBroker, workdir: Path) -> dict:
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=workdir / "spool", partitions=2,
                          predictions_topic=f"delay-p-{suffix}", feedback_topic=f"delay-f-{suffix}",
                          model_events_topic=f"delay-m-{suffix}")
    ensure_topics(kafka)
    settings = MonitorSettings(window_seconds=window_s)
    reference = reference_from_arrays("v1", LABELS, rows(400, np.random.default_rng(1), 0.0, WORDS))
    clock = DriftClock()
    monitor = DriftMonitor(settings, lambda version: reference, events=clock, keep_reports=False)
    verdicts: list[tuple[float, Evaluation]] = []
    evaluate = monitor._evaluate

    def recorded(*args, **kwargs):  # every verdict, with when it was given
        evaluation = evaluate(*args, **kwargs)
        verdicts.append((time.time(), evaluation))
        return evaluation

    monitor._evaluate = recorded
    consumer = EventConsumer(kafka, ["predictions"], group_id=f"delay-{suffix}", auto_offset_reset="latest")
    stop = threading.Event()
    loop = threading.Thread(target=ConsumeLoop(monitor).run, args=(consumer, stop, 200), daemon=True)
    loop.start()
    deadline = time.monotonic() + 60  # in the group and positioned before any traffic
    while not consumer.lag() and time.monotonic() < deadline:
        time.sleep(0.2)

    # Traffic starts on a window boundary: 1.5 windows in-domain, the switch mid-window, 2 windows shifted.
    start = time.time() + 3
    start += window_s - start % window_s
    switch = start + 1.5 * window_s
    end = switch + 2 * window_s + settings.window_grace_seconds + 1
    producers = PRODUCERS[rate]
    sent_out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=produce, args=(broker.bootstrap_servers, kafka.predictions_topic,
                                                           rate / producers, start, switch, end, 10 + k, sent_out))
             for k in range(producers)]
    for p in procs:
        p.start()
    max_lag = max_lag_s = 0.0
    while time.time() < end + 2 * window_s and not clock.started:
        registry = monitor.metrics.registry
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "tuneloop_monitor_consumer_lag":
                    max_lag = max(max_lag, sample.value)
                elif sample.name == "tuneloop_monitor_consumer_lag_seconds":
                    max_lag_s = max(max_lag_s, sample.value)
        time.sleep(0.25)
    for p in procs:
        p.join(timeout=120)
    sent = sum(sent_out.get(timeout=10) for _ in procs)
    stop.set()
    loop.join(timeout=30)
    consumer.close()
    detected = next((t for t, e in clock.started), None)
    before = [e for t, e in verdicts if t < switch]
    return {
        "rate": rate, "achieved": sent / (end - start), "sent": sent,
        "delay_s": None if detected is None else detected - switch,
        "false_alarms": sum(e.drift for e in before), "verdicts_before": len(before),
        "sample": max((e.rows for _, e in verdicts), default=0),
        "window_predictions": max((e.predictions for _, e in verdicts), default=0),
        "max_lag": max_lag, "max_lag_s": max_lag_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--window-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "monitor-delay.md")
    args = parser.parse_args()
    unknown = set(args.rates) - set(PRODUCERS)
    if unknown:
        parser.error(f"rates must be among {sorted(PRODUCERS)}, got {sorted(unknown)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            with TansuBroker(log_path=Path(tmp) / f"tansu-{rate}.log") as broker:
                result = run_rate(rate, args.window_seconds, broker, Path(tmp) / str(rate))
            print(result, file=sys.stderr)
            results.append(result)
    w = args.window_seconds
    settings = MonitorSettings(window_seconds=w)
    lines = [
        "# Drift monitor: detection delay by traffic rate",
        "",
        f"`bench/bench_monitor_delay.py --rates {' '.join(map(str, args.rates))} --window-seconds {w:g}`, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores shared by the broker, the "
        "producers and the monitor. One monitor process; the shipped settings but windows of "
        f"{w:g} s (sample at most {settings.max_window_sample}, minimum {settings.min_window_sample}, grace "
        f"{settings.window_grace_seconds:g} s). Synthetic traffic (see the script): 1.5 windows in-domain, then "
        "a shifted domain. Delay: from the first shifted event sent to `drift_started`; the bar is 2 windows "
        f"({2 * w:g} s).",
        "",
        "| rate asked (events/s) | achieved | verdicts before the switch (false alarms) | predictions per window "
        "(sample) | largest consumer lag | delay | in windows |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        delay = "never" if r["delay_s"] is None else f"{r['delay_s']:.1f} s"
        windows = "—" if r["delay_s"] is None else f"{r['delay_s'] / w:.2f}"
        lines.append(f"| {r['rate']:,} | {r['achieved']:,.0f} | {r['verdicts_before']} ({r['false_alarms']}) | "
                     f"{r['window_predictions']:,} ({r['sample']}) | {r['max_lag']:,.0f} events, "
                     f"{r['max_lag_s']:.1f} s | {delay} | {windows} |")
    lines.append("")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
