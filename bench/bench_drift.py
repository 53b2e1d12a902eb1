"""Drift monitor benchmark: detection delay and false alarms per signal, and what an evaluation costs.

    .venv/bin/python bench/bench_drift.py [--window-mode time|count] [--streams 3] [--out PATH]

Data: ../shared/data/sentiment-labelled-sentences (read in place). The model is MiniLM fine-tuned on the
amazon sentences by `tuneloop train`, at the default validation fraction and at the demo's (trained once into
bench/.work/, reused by later runs); the traffic is what a real `tuneloop serve` of it logged on Kafka
(tests/monitoring/corpus.py). Uses the monitor's default settings (MonitorSettings), i.e. exactly what ships,
in either window mode: time (the default; results/drift-time-windows.md) or count (results/drift.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import DEFAULT_VALIDATION_FRACTION, DEMO_VALIDATION_FRACTION  # noqa: E402
from tests.monitoring.corpus import run_stream, served_scenario  # noqa: E402
from tests.trained_versions import train_with_cli  # noqa: E402
from tuneloop.events.broker import TansuBroker  # noqa: E402
from tuneloop.settings import MonitorSettings  # noqa: E402

WORK = ROOT / "bench" / ".work" / "drift"
VERSIONS = {"default": DEFAULT_VALIDATION_FRACTION, "demo": DEMO_VALIDATION_FRACTION}

IN_DOMAIN_WINDOWS = 20
AFTER_WINDOWS = 3
DEFAULT_OUT = {"time": "drift-time-windows.md", "count": "drift.md"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=3, help="independent streams per shifted domain")
    parser.add_argument("--window-mode", choices=sorted(DEFAULT_OUT), default=MonitorSettings().window_mode)
    parser.add_argument("--out", type=Path, help="default: bench/results/drift-time-windows.md or drift.md")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / DEFAULT_OUT[args.window_mode]
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    sections = []
    with TansuBroker(log_path=WORK / "tansu.log") as broker:
        for label, fraction in VERSIONS.items():
            trained = train_with_cli(WORK / f"{label}-registry", fraction)
            served = WORK / f"{label}-served-{time.strftime('%Y%m%d-%H%M%S')}"
            scenario = served_scenario(trained, served, broker.bootstrap_servers)
            print(f"{label}: reference {len(scenario.reference['texts'])} rows; traffic served", file=sys.stderr)
            sections.append(_measure(args, scenario, label, fraction))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_header(args, time.perf_counter() - started) + "\n".join(sections))
    print(args.out.read_text())


def _measure(args, scenario, label: str, fraction: float) -> str:
    settings = MonitorSettings(window_mode=args.window_mode)
    signals = [name for name, o in settings.signals.items() if o.get("enabled", True)]
    stats = {
        name: {"fa": 0, "n": 0, "delays": {"yelp": [], "imdb": []}, "null_scores": [], "shift_scores": []}
        for name in [*signals, "any"]
    }
    durations: dict[str, list[float]] = {name: [] for name in signals}
    totals: list[float] = []

    for domain in ("yelp", "imdb"):
        for k in range(args.streams):
            seed = 1000 + 17 * k + (0 if domain == "yelp" else 7)
            _, before, after = run_stream(scenario, settings, domain, IN_DOMAIN_WINDOWS, seed, AFTER_WINDOWS)
            for evaluation in before + after:
                for name, seconds in evaluation.durations.items():
                    durations[name].append(seconds)
                totals.append(sum(evaluation.durations.values()))
            for name in [*signals, "any"]:
                flags_before = [_flag(e, name) for e in before]
                flags_after = [_flag(e, name) for e in after]
                s = stats[name]
                s["fa"] += sum(flags_before)
                s["n"] += len(flags_before)
                delay = next((i for i, f in enumerate(flags_after, 1) if f), None)
                s["delays"][domain].append(delay)
                if name != "any":
                    s["null_scores"] += [e.scores()[name] for e in before if name in e.scores()]
                    # Fully shifted windows only: the first one after the switch still holds in-domain rows.
                    s["shift_scores"] += [(domain, e.scores()[name]) for e in after[1:] if name in e.scores()]
            print(f"{label}: {domain} stream {k + 1}/{args.streams} done", file=sys.stderr)

    memory = _memory_cost(scenario, settings)
    return _markdown(args, settings, signals, stats, durations, totals, memory, scenario, label, fraction)


def _flag(evaluation, name: str) -> bool:
    if name == "any":
        return evaluation.drift
    return any(r.signal == name and r.detected for r in evaluation.results)


def _memory_cost(scenario, settings) -> dict[str, float | int]:
    """Peak Python-heap growth (tracemalloc, numpy included) while a monitor evaluates windows with reports
    kept, and the process's peak RSS."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _, before, after = run_stream(scenario, settings, "yelp", 4, seed=99, after_windows=2, keep_reports=True)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {
        "evaluations": len(before) + len(after),
        "tracemalloc_peak_mib": peak / 2**20,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _fmt_delay(delays: list[int | None]) -> str:
    missed = sum(d is None for d in delays)
    hit = [d for d in delays if d is not None]
    if not hit:
        return f"never ({missed}/{len(delays)} missed)"
    text = f"{statistics.mean(hit):.1f} (max {max(hit)})"
    return text + (f", {missed}/{len(delays)} missed" if missed else "")


def _header(args, elapsed: float) -> str:
    return "\n".join([
        "# Drift monitor: detection and cost",
        "",
        f"`bench/bench_drift.py --window-mode {args.window_mode} --streams {args.streams}`, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores (shared with other work: "
        f"timings are noisy), run time {elapsed:.0f} s.",
        "",
        "The model: MiniLM-L6 fine-tuned on the amazon sentences by `tuneloop train` (test fraction 0.4, max "
        "length 64), once at the default validation fraction and once at the demo's. The reference sample is "
        "the version's own `reference.npz` (its validation split, as the monitor loads it). The traffic: the "
        "400 amazon sentences of its test split (never trained or validated on) and every yelp and imdb "
        "sentence, each sent through a real `tuneloop serve` of the version, and read back from "
        "`tuneloop.predictions` as the monitor receives them (ONNX embeddings, float16 on the wire).",
        "",
    ])


def _window_text(settings: MonitorSettings) -> str:
    if settings.window_mode == "count":
        return (f"the shipped count windows (`window_mode: count`) — window {settings.window_size} "
                f"predictions, evaluated every {settings.window_step}")
    # corpus.run_stream fills each time window with twice the sample so that the reservoir has a choice.
    return (f"the shipped time windows (`window_mode: time`) — each window holds "
            f"{2 * settings.max_window_sample} distinct predictions of which the reservoir evaluates "
            f"{settings.max_window_sample}, windows do not overlap")


def _markdown(args, settings, signals, stats, durations, totals, memory, scenario, label, fraction) -> str:
    header = (
        "| signal | method | threshold | false alarms (in-domain windows) | max in-domain score "
        "| delay yelp | delay imdb | min shifted score yelp / imdb |"
    )
    accuracy = {name: float((rows["predictions"] == rows["labels"]).mean())
                for name, rows in {"amazon": scenario.held_out, **scenario.shifted}.items()}
    lines = [
        f"## Validation fraction {fraction} (`{label}`): a reference of {len(scenario.reference['texts'])} rows",
        "",
        f"- Settings: {_window_text(settings)}; signals and thresholds as in "
        "`MonitorSettings.DEFAULT_SIGNALS`.",
        "- The served model's accuracy on the traffic: "
        + ", ".join(f"{name} {acc:.3f}" for name, acc in accuracy.items()) + ".",
        f"- In-domain traffic: {IN_DOMAIN_WINDOWS} evaluations per stream drawn from the 400 held-out "
        "sentences. The pool is smaller than the traffic, so sentences recur: drawn at random, with the "
        "constraint that no window holds a sentence twice (a duplicate inside a window lets the embedding "
        "classifier memorise it, which distinct real requests don't). "
        + ("Windows overlap (sliding) and the" if settings.window_mode == "count" else "The")
        + " streams reuse one pool, so the false-alarm counts are not independent trials.",
        "- Switch: after the in-domain part the stream continues with random yelp or imdb sentences "
        f"({AFTER_WINDOWS} evaluations). Delay 1 = the first evaluation after the switch (its window is half "
        "shifted"
        + ("" if settings.window_mode == "count" else ": the switch falls mid-window")
        + "), 2 = the second (fully shifted).",
        f"- {args.streams} streams per shifted domain, different seeds: {stats['any']['n']} in-domain "
        "evaluations in all.",
        "",
        "### Detection",
        "",
        header,
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in [*signals, "any"]:
        s = stats[name]
        if name == "any":
            method, threshold, null_max, shifted = "—", "—", "—", "—"
        else:
            options = settings.signals[name]
            method, threshold = options["method"], f"{options['threshold']:g}"
            null_max = f"{max(s['null_scores']):.3f}" if s["null_scores"] else "—"
            by = {d: [v for dd, v in s["shift_scores"] if dd == d] for d in ("yelp", "imdb")}
            shifted = " / ".join(f"{min(v):.3f}" if v else "—" for v in by.values())
        label = "**any (the drift flag)**" if name == "any" else f"`{name}`"
        lines.append(
            f"| {label} | {method} | {threshold} | {s['fa']}/{s['n']} ({s['fa'] / max(s['n'], 1):.1%}) | "
            f"{null_max} | {_fmt_delay(s['delays']['yelp'])} | {_fmt_delay(s['delays']['imdb'])} "
            f"| {shifted} |"
        )
    lines += [
        "",
        "Scores: higher = more drift for every default method (embedding: ROC AUC of Evidently's domain "
        "classifier; prediction: PSI; others: Wasserstein distance normed by the reference's standard "
        'deviation). "min shifted score" is over fully shifted windows.',
        "",
        "### Cost per evaluation",
        "",
        "| signal | mean ms | p95 ms | evaluations |",
        "| --- | --- | --- | --- |",
    ]
    for name in signals:
        d = np.array(durations[name]) * 1000
        lines.append(f"| `{name}` | {d.mean():.0f} | {np.percentile(d, 95):.0f} | {len(d)} |")
    t = np.array(totals) * 1000
    lines.append(f"| **window (all signals)** | {t.mean():.0f} | {np.percentile(t, 95):.0f} | {len(t)} |")
    lines += [
        "",
        "Memory: peak Python-heap growth while a monitor evaluates "
        f"{memory['evaluations']} windows and keeps "
        f"their reports (tracemalloc, numpy arrays included): {memory['tracemalloc_peak_mib']:.1f} MiB; peak "
        "RSS of the whole benchmark process (Python, pandas, Evidently, scikit-learn, the embeddings of 3000 "
        f"sentences): {memory['max_rss_mib']:.0f} MiB. A kept report is ~1.2 MB once rendered (gzip of "
        "~3.8 MB HTML), rendered only when requested.",
        "",
        "Evaluation time excludes report rendering (done on request, ~0.2 s). Evidently's `EmbeddingsDrift` "
        "metric itself is not on this path: its t-SNE map took 5–27 s per window here, so the embedding "
        "signal runs the same Evidently drift method directly and shows principal components in the report "
        "(`report: tsne` switches the map on).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
