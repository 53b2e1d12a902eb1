"""Adaptation benchmark: what the adapter's retraining buys on a new domain, and what it costs.

    .venv/bin/python bench/bench_adaptation.py [--sizes 50,100,200,400] [--out bench/results/adaptation.md]

The production model is MiniLM fine-tuned on the amazon sentences by `tuneloop train` (trained once into
bench/.work/, reused). For yelp and imdb: 400 sentences are held out as that domain's test set (never labelled
for the adapter); the first N of the rest become fresh feedback in the adapter's label store, and the adapter's
own Retrainer runs (continual fine-tuning from production, its default policy and gates), once with its default
replay of production's training data and once without. Each candidate and production are then scored through
their ONNX graphs on the held-out domain test and on amazon's held-out test split.

Then the cost: the adapter's fine-tuning step against a plain Hugging Face Trainer on the same rows, epochs and
hyperparameters (no evaluation, no checkpoints), timed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter.loop.gates.base import Graph  # noqa: E402
from adapter.loop.gates.latency import open_as_served  # noqa: E402
from adapter.loop.policy import AdapterPolicy  # noqa: E402
from adapter.loop.retrain import Retrainer  # noqa: E402
from adapter.loop.store import LabelStore  # noqa: E402
from adapter.training.base_model import resolve_base_model  # noqa: E402
from adapter.training.data import Split  # noqa: E402
from adapter.training.trainer import fine_tune  # noqa: E402
from tests.adapter.labels import feed  # noqa: E402
from tests.conftest import DEFAULT_VALIDATION_FRACTION, IMDB, YELP, read_sentences  # noqa: E402
from tests.trained_versions import train_with_cli  # noqa: E402
from tuneloop.registry import Registry  # noqa: E402
from tuneloop.settings import load_settings  # noqa: E402

WORK = ROOT / "bench" / ".work" / "adaptation"
DOMAINS = {"yelp": YELP, "imdb": IMDB}
HELD_OUT = 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200,400", help="fresh labels per run")
    parser.add_argument("--domains", default="yelp,imdb")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adaptation.md")
    parser.add_argument("--hyperparameters", default="{}", help="JSON merged over the policy's (e.g. a learning rate)")
    parser.add_argument("--replay", default="1.0,0.0", help="replay ratios to run")
    parser.add_argument("--no-cost", action="store_true", help="skip the Trainer comparison")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    trained = train_with_cli(WORK / "amazon-registry", DEFAULT_VALIDATION_FRACTION)
    amazon_test = trained.data.test
    rows = []
    for domain in args.domains.split(","):
        sentences = read_sentences(DOMAINS[domain])
        random.Random(7).shuffle(sentences)
        test = Split([t for t, _ in sentences[:HELD_OUT]], [int(y) for _, y in sentences[:HELD_OUT]])
        pool = sentences[HELD_OUT:]
        before = score(trained.registry, trained.version, {"domain": test, "amazon": amazon_test})
        for n in sizes:
            for replay in (float(r) for r in args.replay.split(",")):
                outcome, seconds, after = adapt(trained, pool[:n], replay, {"domain": test, "amazon": amazon_test},
                                                json.loads(args.hyperparameters))
                rows.append({"domain": domain, "n": n, "replay": replay, "before": before, "after": after,
                             "state": outcome.state.value, "reasons": outcome.report.reasons(), "seconds": seconds})
                print(f"{domain} n={n} replay={replay}: {before} -> {after} ({outcome.state.value})", file=sys.stderr)
    cost = None if args.no_cost else trainer_cost(trained, read_sentences(YELP)[HELD_OUT:HELD_OUT + 400])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(args, rows, cost, time.perf_counter() - started))
    print(args.out.read_text())


def adapt(trained, fresh_rows, replay: float, test_sets: dict[str, Split], hyperparameters: dict):
    """The adapter's own retraining on ``fresh_rows``, from a copy of the amazon registry."""
    work = Path(tempfile.mkdtemp(dir=WORK))
    try:
        root = trained.registry_copy(work / "registry")
        settings = load_settings(registry=str(root), adapter={"store_url": f"sqlite:///{work / 'labels.db'}",
                                                              "workdir": str(work / "staging")})
        store = LabelStore(settings.adapter.store_url)
        feed(store, fresh_rows)
        store.add_trigger("manual", {"actor": "bench"})
        retraining = {"replay_ratio": replay}
        if hyperparameters:
            retraining["hyperparameters"] = hyperparameters
        policy = AdapterPolicy.model_validate({"triggers": {"min_fresh_examples": 20}, "retraining": retraining})
        began = time.perf_counter()
        outcome = Retrainer(settings, policy, store, Registry(root)).run_if_due()
        seconds = time.perf_counter() - began
        return outcome, seconds, score(root, outcome.version, test_sets)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def score(root: Path, version: str, test_sets: dict[str, Split]) -> dict[str, float]:
    """Accuracy of a version's ONNX graph, opened as the service opens it, on each test set."""
    opened = Registry(root).open_version(version)
    session = open_as_served(Graph(opened.onnx_path(), opened.tokenizer_dir, opened.card.max_length),
                             load_settings().serving)
    return {name: round(float((session.predict(s.texts)[0].argmax(axis=1) == np.asarray(s.labels)).mean()), 4)
            for name, s in test_sets.items()}


def trainer_cost(trained, rows, rounds: int = 3) -> dict[str, list[float]]:
    """The adapter's fine-tuning step and a plain Trainer on the same 400 rows, alternated ``rounds`` times."""
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from adapter.training.data import LabelledData
    from adapter.training.hyperparameters import Hyperparameters

    registry = Registry(trained.registry)
    base = resolve_base_model(trained.version, registry)
    split = int(len(rows) * 0.8)
    data = LabelledData(["0", "1"], Split([t for t, _ in rows[:split]], [int(y) for _, y in rows[:split]]),
                        Split([t for t, _ in rows[split:]], [int(y) for _, y in rows[split:]]),
                        Split([t for t, _ in rows[split:]], [int(y) for _, y in rows[split:]]))
    hp = Hyperparameters(max_length=64)
    timings: dict[str, list[float]] = {"adapter": [], "plain": []}
    for _ in range(rounds):
        began = time.perf_counter()
        fine_tune(data, hp, base, show_progress=False)
        timings["adapter"].append(time.perf_counter() - began)
        began = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(base.tokenizer)
        model = AutoModelForSequenceClassification.from_pretrained(base.weights)
        dataset = Dataset.from_dict({"text": data.train.texts, "labels": data.train.labels}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=hp.max_length), batched=True,
            remove_columns=["text"])
        with tempfile.TemporaryDirectory() as out:
            Trainer(model=model, args=TrainingArguments(
                output_dir=out, learning_rate=hp.learning_rate, per_device_train_batch_size=hp.batch_size,
                num_train_epochs=hp.epochs, weight_decay=hp.weight_decay, warmup_steps=hp.warmup_ratio,
                report_to="none", disable_tqdm=True, save_strategy="no", seed=hp.seed),
                train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer)).train()
        timings["plain"].append(time.perf_counter() - began)
    return timings


def markdown(args, rows, cost, elapsed: float) -> str:
    lines = [
        "# Adaptation: what retraining on fresh labels buys, and what it costs",
        "",
        f"`bench/bench_adaptation.py`, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other work: timings are noisy), run time {elapsed / 60:.0f} min.",
        "",
        "Production: MiniLM-L6 fine-tuned on the amazon sentences by `tuneloop train` (test fraction 0.4). Each row is "
        "one run of the adapter's own Retrainer (continual fine-tuning from production, the default policy and "
        f"gates) on N fresh labelled sentences of the new domain; {HELD_OUT} other sentences of that domain are its "
        "held-out test, never labelled for the adapter. Accuracy through each version's ONNX graph. The adapter "
        "keeps the newest quarter of the fresh labels as its fresh test set, so it trains on about 60% of N "
        "(and validates on 15%).",
        "",
        "| domain | fresh labels | replay | domain accuracy before → after | amazon accuracy before → after | "
        "gates | retraining s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d = r["after"]["domain"] - r["before"]["domain"]
        a = r["after"]["amazon"] - r["before"]["amazon"]
        verdict = r["state"] if not r["reasons"] else f"{r['state']}: {'; '.join(r['reasons'])[:160]}"
        lines.append(f"| {r['domain']} | {r['n']} | {'1:1' if r['replay'] else 'none'} | "
                     f"{r['before']['domain']:.3f} → {r['after']['domain']:.3f} ({d * 100:+.1f}) | "
                     f"{r['before']['amazon']:.3f} → {r['after']['amazon']:.3f} ({a * 100:+.1f}) | {verdict} | "
                     f"{r['seconds']:.0f} |")
    if cost is None:
        return "\n".join(lines)
    adapter, plain = statistics.median(cost["adapter"]), statistics.median(cost["plain"])
    lines += [
        "",
        "## Cost of the fine-tuning step",
        "",
        "320 yelp sentences (80 for validation), 3 epochs, batch 32, max length 64, from the amazon version; "
        "the adapter's `fine_tune` (evaluation and a checkpoint each epoch, early stopping, the best epoch kept) "
        "against a plain `transformers.Trainer` (no evaluation, no checkpoint), alternated "
        f"{len(cost['adapter'])} times: median {adapter:.1f} s against {plain:.1f} s, **{adapter / plain:.2f}×** "
        f"(each run: adapter {', '.join(f'{s:.1f}' for s in cost['adapter'])}; plain "
        f"{', '.join(f'{s:.1f}' for s in cost['plain'])}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
