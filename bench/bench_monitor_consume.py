"""The drift monitor's consumption rate: prediction events per second one process reads off the broker.

    .venv/bin/python bench/bench_monitor_consume.py [--events 60000] [--out bench/results/monitor-consume.md]

Loads a topic of a real Tansu broker (loopback, 2 partitions) with realistic prediction events (a review-length
text, a 384-float embedding, lz4 batches as the service sends them), then reads all of them back three ways,
side by side in this one process:

- kafka-python alone (poll, nothing decoded): the ceiling of this client on this machine;
- ``EventConsumer.poll``: CloudEvent decoding, schema validation, duplicate check;
- the monitor's whole consume loop (``ConsumeLoop.step``: the above, then ``DriftMonitor.observe``) at the
  shipped ``MonitorSettings``, Evidently evaluations included.

The events' timestamps span five time windows, so windows close and are evaluated during the run as they
would live. For comparison, the count windows (``window_mode: count``, the monitor before time windows) read the
first ``--count-events`` of the same events: they evaluate every ``window_step`` predictions, so their rate
is set by Evidently, not by the consumer.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from monitoring.consume import ConsumeLoop  # noqa: E402
from monitoring.monitor import DriftMonitor  # noqa: E402
from monitoring.reference import reference_from_arrays  # noqa: E402
from tuneloop.events.broker import TansuBroker  # noqa: E402
from tuneloop.events.client_config import consumer_config, ensure_topics, producer_config  # noqa: E402
from tuneloop.events.consumer import EventConsumer  # noqa: E402
from tuneloop.events.envelope import wrap  # noqa: E402
from tuneloop.events.schemas import PredictionEvent, encode_embedding  # noqa: E402
from tuneloop.settings import KafkaSettings, MonitorSettings  # noqa: E402

LABELS = ["negative", "positive"]
WIDTH = 384  # MiniLM's pooled embedding
TEXT = "the battery lasts two days and the screen is sharp, but the speaker is weak"
START = 1.8e9


def reference_rows(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    embeddings = rng.standard_normal((n, WIDTH)).astype(np.float32)
    p = 1 / (1 + np.exp(-embeddings[:, 0]))
    probabilities = np.stack([1 - p, p], 1).astype(np.float32)
    return {"embeddings": embeddings, "probabilities": probabilities, "predictions": probabilities.argmax(1),
            "texts": np.array([TEXT] * n, dtype=str)}


def encoded_events(n: int, rate: float, rng: np.random.Generator) -> list[bytes]:
    """Distinct events (ids, embeddings) as the service logs them, ``rate`` per second of event time."""
    pool = reference_rows(512, rng)
    values = []
    for i in range(n):
        row = i % 512
        p = float(pool["probabilities"][row, 1])
        event = PredictionEvent(
            request_id=uuid.uuid4().hex, model_name="sentiment", model_version="v1", input_mode="text",
            timestamp=datetime.fromtimestamp(START + i / rate, timezone.utc), text=TEXT, text_length=len(TEXT),
            label=LABELS[int(p > 0.5)], probabilities={"negative": 1 - p, "positive": p},
            embedding=encode_embedding(pool["embeddings"][row]), latency_ms=3.0)
        values.append(wrap(event, "bench").value)
    return values


def load_topic(settings: KafkaSettings, values: list[bytes]) -> None:
    producer = KafkaProducer(**producer_config(settings))
    for value in values:
        producer.send(settings.predictions_topic, value=value)
    producer.flush(timeout=120)
    producer.close()


def read_raw(settings: KafkaSettings, n: int) -> float:
    consumer = KafkaConsumer(settings.predictions_topic,
                             **consumer_config(settings, f"bench-raw-{uuid.uuid4().hex[:8]}"))
    got, started = 0, None
    while got < n:
        records = consumer.poll(timeout_ms=1000, max_records=500)
        if records and started is None:
            started = time.perf_counter()
        got += sum(len(r) for r in records.values())
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed


def read_events(settings: KafkaSettings, n: int) -> float:
    consumer = EventConsumer(settings, ["predictions"], group_id=f"bench-events-{uuid.uuid4().hex[:8]}")
    got, started = 0, None
    while got < n:
        batch = consumer.poll(timeout_ms=1000)
        if batch.offsets and started is None:
            started = time.perf_counter()
        got += len(batch.events)
        consumer.commit(batch)
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed


def read_monitor(settings: KafkaSettings, n: int, monitor_settings: MonitorSettings) -> tuple[float, int]:
    """Events/s of the whole consume loop over the first ``n`` events of the topic, and evaluations run."""
    reference = reference_from_arrays("v1", LABELS, reference_rows(250, np.random.default_rng(1)))
    monitor = DriftMonitor(monitor_settings, lambda version: reference, keep_reports=False)
    loop = ConsumeLoop(monitor)
    consumer = EventConsumer(settings, ["predictions"], group_id=f"bench-monitor-{uuid.uuid4().hex[:8]}")
    observed = lambda: monitor.metrics.registry.get_sample_value(  # noqa: E731
        "tuneloop_monitor_events_total", {"outcome": "observed"})
    started = None
    while observed() < n:
        loop.step(consumer, poll_timeout_ms=1000)
        if started is None and observed():
            started = time.perf_counter()
    elapsed = time.perf_counter() - started
    consumer.close()
    evaluations = int(monitor.metrics.registry.get_sample_value(
        "tuneloop_drift_evaluation_duration_seconds_count", {"signal": "embedding"}) or 0)
    return n / elapsed, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--count-events", type=int, default=3_000, help="events read with count windows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "monitor-consume.md")
    args = parser.parse_args()
    if not 0 < args.count_events <= args.events:
        parser.error("--count-events must be between 1 and --events")
    rng = np.random.default_rng(0)
    monitor_settings = MonitorSettings()
    values = encoded_events(args.events, rate=args.events / (5 * monitor_settings.window_seconds), rng=rng)
    with tempfile.TemporaryDirectory() as tmp, TansuBroker(log_path=Path(tmp) / "tansu.log") as broker:
        suffix = uuid.uuid4().hex[:8]
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, spool_dir=Path(tmp) / "spool",
                                 predictions_topic=f"bench-p-{suffix}", feedback_topic=f"bench-f-{suffix}",
                                 model_events_topic=f"bench-m-{suffix}", partitions=2)
        ensure_topics(settings)
        load_topic(settings, values)
        raw = read_raw(settings, args.events)
        events = read_events(settings, args.events)
        window = (f"time windows of {monitor_settings.window_seconds:g} s, a sample of at most "
                  f"{monitor_settings.max_window_sample}")
        whole, evaluations = read_monitor(settings, args.events, monitor_settings)
        count_settings = MonitorSettings(window_mode="count")
        counted, count_evaluations = read_monitor(settings, args.count_events, count_settings)
    rows = [
        ("kafka-python poll, nothing decoded (the client's ceiling)", raw),
        ("`EventConsumer.poll`: CloudEvent decoded, schema validated, duplicates dropped", events),
        (f"the monitor's consume loop at the shipped settings (`ConsumeLoop.step`): {window}, "
         f"{evaluations} evaluations", whole),
        (f"the same with count windows of {count_settings.window_size}, every {count_settings.window_step} "
         f"(the first {args.count_events:,} events, {count_evaluations} evaluations)", counted),
    ]
    text = "\n".join([
        "# Drift monitor: consumption rate",
        "",
        f"`bench/bench_monitor_consume.py --events {args.events}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work: rates are noisy), one process; "
        "Tansu on loopback, 2 partitions, lz4. Each event: a 76-character text, a 384-float embedding "
        f"({len(values[0]):,} bytes as a CloudEvent); their timestamps span five time windows.",
        "",
        "| what reads the topic | events/s |",
        "| --- | --- |",
        *[f"| {name} | {rate:,.0f} |" for name, rate in rows],
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
