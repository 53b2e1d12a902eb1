"""One retraining: fresh examples and a replay of production's own training data → the training pipeline's
steps → the gates, judged against production → a registered version, awaiting approval or rejected.

One retraining at a time across every adapter sharing the store (its retrain lock). A run is recorded as
running before any work; a run found still "running" by the next holder of the lock was interrupted (its
process died: the lock would still be held otherwise), so its triggers wait again and a candidate it may have
registered is rejected. A version reaches the registry whole or not at all (the registry's own guarantee).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapter.errors import AdapterError
from adapter.loop import metrics
from adapter.loop.gates import Evidence, Graph, Predictions, build_gates, judge
from adapter.loop.gates.latency import open_as_served
from adapter.loop.policy import AdapterPolicy
from adapter.loop.store import Example, LabelStore, Trigger
from adapter.pipeline import (HOME_TEST_SET, evaluate, export_with_parity, fit, model_card, reference_sample,
                              save_datasets, save_model_files)
from adapter.training.base_model import resolve_base_model
from adapter.training.data import LabelledData, Split
from adapter.training.metrics import evaluate_logits
from tuneloop.registry import DataFile, GateReport, Lineage, ModelVersion, Registry, SetComparison, State
from tuneloop.settings import Settings

log = logging.getLogger(__name__)

ACTOR = "tuneloop-adapter"


class RetrainError(AdapterError):
    """A retraining cannot start or cannot finish (no production version, unusable data)."""


@dataclass(frozen=True)
class RetrainOutcome:
    run_id: int
    version: str
    state: State
    report: GateReport


@dataclass(frozen=True)
class FreshSplits:
    train: Split
    validation: Split
    test: Split  # the newest share: judged on, never trained on
    examples: list[Example]
    dropped: int  # examples whose label the production version does not know


class Retrainer:
    def __init__(self, settings: Settings, policy: AdapterPolicy, store: LabelStore, registry: Registry,
                 owner: str | None = None, show_progress: bool = False) -> None:
        self.settings = settings
        self.policy = policy
        self.store = store
        self.registry = registry
        self.owner = owner or socket.gethostname()
        self.show_progress = show_progress
        self.running_run: int | None = None  # the run this process is retraining, if any

    # ------------------------------------------------------------------ what there is to learn from
    def production(self) -> ModelVersion:
        version = self.registry.production()
        if version is None:
            raise RetrainError(f"no version is in production in {self.registry.root_url}: nothing to adapt")
        return self.registry.open_version(version)

    @staticmethod
    def watermark(production: ModelVersion) -> int:
        """The newest example production's lineage has seen: fresh examples come after it."""
        return production.card.lineage.examples_through if production.card.lineage else 0

    def fresh_count(self) -> int:
        return self.store.count_after(self.watermark(self.production()))

    def fresh_splits(self, production: ModelVersion) -> FreshSplits:
        """The fresh examples, split by time: the newest share is the fresh test set; the older rest is split
        at random (seeded) into training and validation (early stopping)."""
        policy = self.policy.retraining
        known = {name: i for i, name in enumerate(production.labels)}
        everything = self.store.examples(self.watermark(production))
        usable = [e for e in everything if e.label in known]
        n_test = math.ceil(len(usable) * policy.fresh_test_share)
        older, newest = usable[: len(usable) - n_test], usable[len(usable) - n_test:]
        order = np.random.default_rng(policy.seed).permutation(len(older))
        n_validation = max(1, round(len(older) * policy.validation_share)) if len(older) > 1 else 0
        validation = [older[i] for i in order[:n_validation]]
        train = [older[i] for i in order[n_validation:]]

        def split(rows: list[Example]) -> Split:
            return Split([e.text for e in rows], [known[e.label] for e in rows])

        return FreshSplits(split(train), split(validation), split(newest), usable, len(everything) - len(usable))

    def replay(self, production: ModelVersion, fresh_train: Split) -> Split:
        """A seeded sample of production's own training rows, ``replay_ratio`` per fresh training row."""
        if "train" not in production.card.datasets or self.policy.retraining.replay_ratio == 0:
            return Split([], [])
        rows = production.dataset("train")
        n = min(len(rows), round(len(fresh_train) * self.policy.retraining.replay_ratio))
        picked = np.random.default_rng(self.policy.retraining.seed).permutation(len(rows))[:n]
        known = {name: i for i, name in enumerate(production.labels)}
        return Split([rows[i][0] for i in picked], [known[rows[i][1]] for i in picked])

    @staticmethod
    def golden_sets(production: ModelVersion, learnt_from: set[str]) -> dict[str, Split]:
        """Production's own test sets; its home test set is named after it (v3/test), the sets it carried
        over keep their names, so a lineage accumulates what it must not forget. A row whose text the
        candidate learns from (``learnt_from``: the fresh training and validation texts) is left out: a
        golden set that holds training data flatters the candidate."""
        known = {name: i for i, name in enumerate(production.labels)}
        # Compared with whitespace collapsed: a data file keeps a sentence's trailing spaces, the same sentence
        # sent as traffic usually has none, and both are the same example to the tokenizer.
        learnt = {_same_text(t) for t in learnt_from}
        sets = {}
        for name in production.card.datasets:
            if name == "train":
                continue
            rows = [(t, label) for t, label in production.dataset(name) if _same_text(t) not in learnt]
            key = f"{production.version}/{name}" if name == HOME_TEST_SET else name
            sets[key] = Split([t for t, _ in rows], [known[label] for _, label in rows])
        return sets

    # ------------------------------------------------------------------ one run, under the lock
    def run_if_due(self) -> RetrainOutcome | None:
        """Retrain if triggers wait and there are enough fresh examples, holding the store's retrain lock;
        None when another adapter holds it, nothing waits, or too few examples are fresh."""
        with self.store.retrain_lock() as taken:
            if not taken:
                return None
            self.recover_interrupted()
            waiting = self.store.waiting_triggers()
            if not waiting:
                return None
            fresh = self.fresh_count()
            if fresh < self.policy.triggers.min_fresh_examples:
                return None  # recorded; they wait for more labels
            if self.store.last_example_id() <= self._last_run_examples_through():
                return None  # nothing new since the last run judged these examples: wait for more
            run_id = self.store.start_run(self.owner, [t.id for t in waiting], {"fresh_examples": fresh})
            metrics.RUNNING.set(1)
            self.running_run = run_id
            started = time.perf_counter()
            try:
                outcome = self.retrain(run_id, waiting)
            except Exception as exc:
                log.exception("retraining run %d failed", run_id)
                self.store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
                metrics.RETRAININGS.labels("failed").inc()
                raise
            finally:
                metrics.RUNNING.set(0)
                self.running_run = None
                metrics.RETRAIN_SECONDS.observe(time.perf_counter() - started)
            self.store.finish_run(run_id, outcome.state.value, outcome.version, reasons=outcome.report.reasons(),
                                  examples_through=self.registry.card(outcome.version).lineage.examples_through)
            metrics.RETRAININGS.labels(outcome.state.value).inc()
            return outcome

    def _last_run_examples_through(self) -> int:
        done = [run for run in self.store.runs() if "examples_through" in run.detail]
        return done[-1].detail["examples_through"] if done else 0

    def recover_interrupted(self) -> None:
        """Runs still marked running while this process holds the lock died mid-way: say so, let their
        triggers wait again, and reject a candidate such a run may have registered before it died."""
        for run in self.store.runs("running"):
            log.warning("retraining run %d (started %s by %s) was interrupted; its triggers wait again",
                        run.id, run.started_at.isoformat(timespec="seconds"), run.owner)
            for summary in self.registry.list_versions():
                if summary.state != State.CANDIDATE.value:
                    continue
                lineage = self.registry.card(summary.version).lineage
                if lineage is not None and lineage.run_id == run.id:
                    self.registry.transition(summary.version, State.REJECTED, ACTOR,
                                             f"run {run.id} was interrupted before its gates were recorded")
            self.store.release_triggers(run.id)
            self.store.finish_run(run.id, "interrupted")
            metrics.RETRAININGS.labels("interrupted").inc()

    def retrain(self, run_id: int, triggers: list[Trigger]) -> RetrainOutcome:
        policy = self.policy.retraining
        production = self.production()
        fresh = self.fresh_splits(production)
        if len(fresh.train) < 2 or len(fresh.validation) < 1 or len(fresh.test) < 1:
            raise RetrainError(f"{len(fresh.examples)} usable fresh examples cannot be split into training, "
                               "validation and test sets")
        replay = self.replay(production, fresh.train)
        train = Split(fresh.train.texts + replay.texts, fresh.train.labels + replay.labels)
        hashes = {name: _sha256(split, production.labels) for name, split in
                  (("train", fresh.train), ("validation", fresh.validation), ("test", fresh.test))}
        data = LabelledData(
            label_names=production.labels, train=train, validation=fresh.validation, test=fresh.test,
            files=[DataFile(path=f"label-store:run-{run_id}/fresh-{name}", sha256=digest, rows=n)
                   for (name, digest), n in zip(hashes.items(), (len(fresh.train), len(fresh.validation),
                                                                  len(fresh.test)))],
        )
        golden = self.golden_sets(production, set(fresh.train.texts) | set(fresh.validation.texts))
        base_ref = (production.version if policy.start_from == "production"
                    else policy.base_model or production.card.base_model)
        base = resolve_base_model(base_ref, self.registry)
        hp = policy.hyperparameters_model(production.card.hyperparameters)
        log.info("run %d: %d fresh examples (train %d, validation %d, test %d) + %d replayed from %s; from %s",
                 run_id, len(fresh.examples), len(fresh.train), len(fresh.validation), len(fresh.test),
                 len(replay), production.version, base_ref)
        fitted = fit(data, hp, base, policy.search, self.show_progress)
        test_sets = {HOME_TEST_SET: data.test, **golden}
        evaluation = evaluate(fitted.tuned, test_sets, data.label_names)
        workdir = Path(self.settings.adapter.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"run-{run_id}-", dir=workdir) as tmp:
            staging = Path(tmp)
            exported = export_with_parity(fitted.tuned, staging, self.settings.export, data.test,
                                          evaluation.logits[HOME_TEST_SET])
            reference = reference_sample(fitted.tuned, data.validation, self.settings.training.reference_size,
                                         hp.seed)
            save_model_files(fitted, data.label_names, staging, reference)
            datasets = save_datasets(staging, data, test_sets, self.settings.training.kept_train_rows, hp.seed)
            candidate = Graph(staging / exported.onnx_files["fp32"], staging / "tokenizer", hp.max_length)
            report = judge(build_gates(self.policy.gates), self.evidence(production, candidate, fresh.test, golden,
                                                                        exported.parity))
            lineage = Lineage(
                run_id=run_id, triggers=[{"kind": t.kind, "at": t.at.isoformat(), **t.detail} for t in triggers],
                parent_version=production.version, start_from=policy.start_from,
                fresh={"examples": len(fresh.examples), "dropped_unknown_label": fresh.dropped,
                       "example_ids": [fresh.examples[0].id, fresh.examples[-1].id],
                       "feedback_from": fresh.examples[0].feedback_at.isoformat(),
                       "feedback_to": fresh.examples[-1].feedback_at.isoformat(),
                       "sizes": {"train": len(fresh.train), "validation": len(fresh.validation),
                                 "test": len(fresh.test)}, "sha256": hashes},
                replay={"ratio": policy.replay_ratio, "rows": len(replay), "from": production.version},
                examples_through=fresh.examples[-1].id,
            )
            card = model_card(fitted, data, base, evaluation, exported, production.card.model_name,
                              embedding_dim=int(reference["embeddings"].shape[1]), datasets=datasets)
            card = card.model_copy(update={"lineage": lineage, "gates": report})
            version = self.registry.publish(staging, card, actor=ACTOR,
                                            reason=f"retrained by run {run_id} ({_summary(triggers)})")
        return RetrainOutcome(run_id, version, self.decide(version, report), report)

    def evidence(self, production: ModelVersion, candidate: Graph, fresh_test: Split, golden: dict[str, Split],
                 parity: dict) -> Evidence:
        """Both versions' predictions on every set, from their ONNX graphs opened as the service opens them."""
        graphs = {"production": Graph(production.onnx_path("fp32"), production.tokenizer_dir,
                                      production.card.max_length), "candidate": candidate}
        sessions = {which: open_as_served(graph, self.settings.serving) for which, graph in graphs.items()}

        def predictions(split: Split) -> Predictions:
            labels = np.asarray(split.labels, dtype=np.int64)
            if not len(split):
                return Predictions(labels, np.array([], int), np.array([], int))
            logits = {which: session.predict(split.texts)[0] for which, session in sessions.items()}
            metrics = SetComparison(**{which: evaluate_logits(values, labels, production.labels)
                                       for which, values in logits.items()})
            return Predictions(labels, logits["production"].argmax(axis=1), logits["candidate"].argmax(axis=1),
                               metrics)

        return Evidence(production_version=production.version, label_names=production.labels,
                        fresh=predictions(fresh_test), golden={name: predictions(s) for name, s in golden.items()},
                        parity=parity, graphs=graphs, serving=self.settings.serving,
                        sample_texts=fresh_test.texts[:64])

    def decide(self, version: str, report: GateReport) -> State:
        """Failed gates → rejected with their reasons; passed → awaiting approval, or promoted at once where the
        policy says auto_approve."""
        if not report.passed:
            reasons = "; ".join(report.reasons())
            self.registry.transition(version, State.REJECTED, ACTOR, f"gates failed: {reasons}"[:2000])
            return State.REJECTED
        self.registry.transition(version, State.AWAITING_APPROVAL, ACTOR, "every gate passed")
        if not self.policy.promotion.auto_approve:
            return State.AWAITING_APPROVAL
        self.registry.transition(version, State.APPROVED, ACTOR, "auto_approve: every gate passed")
        self.registry.promote(version, ACTOR, "auto_approve: every gate passed")
        return State.PRODUCTION


def _same_text(text: str) -> str:
    return " ".join(text.split())


def _sha256(split: Split, label_names: list[str]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(split.texts, split.labels):
        digest.update(json.dumps([text, label_names[label]], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def _summary(triggers: list[Trigger]) -> str:
    kinds = sorted({t.kind for t in triggers})
    return ", ".join(kinds) or "no trigger"
