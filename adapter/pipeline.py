"""Train → evaluate on held-out test sets → export ONNX → check parity → register a version.

The CLI's ``tuneloop train`` and the adapter's retraining loop both run this one function.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapter.export.onnx_export import export_model
from adapter.export.parity import check_parity, require_parity
from adapter.training.base_model import resolve_base_model
from adapter.training.data import LabelledData, Split
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.metrics import evaluate_logits
from adapter.training.search import SearchMethod, SearchSpace, run_search
from adapter.training.trainer import FineTuned, fine_tune, predict_torch, probabilities_from_logits
from tuneloop.registry import EvalMetrics, ModelCard, ParityReport, Registry, State, Timings
from tuneloop.settings import Settings


@dataclass
class TrainOutcome:
    version: str
    card: ModelCard
    state: State


def _reference_sample(tuned: FineTuned, split: Split, size: int, seed: int) -> dict[str, np.ndarray]:
    """Validation texts with the model's embeddings and predictions: what "no drift" looks like."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(split))[:size])
    texts = [split.texts[i] for i in idx]
    logits, embeddings = predict_torch(tuned.model, tuned.tokenizer, texts, tuned.hyperparameters.max_length)
    probabilities = probabilities_from_logits(logits)
    return {
        "texts": np.asarray(texts, dtype=np.str_),
        "labels": np.asarray([split.labels[i] for i in idx], dtype=np.int64),
        "predictions": probabilities.argmax(axis=1).astype(np.int64),
        "probabilities": probabilities,
        "embeddings": embeddings,
    }


def train_and_register(
    data: LabelledData,
    hp: Hyperparameters,
    settings: Settings,
    *,
    base_model: str | None = None,
    model_name: str | None = None,
    extra_test_sets: dict[str, Split] | None = None,
    search: SearchMethod | None = None,
    trials: int = 4,
    search_space: SearchSpace | None = None,
    parent_version: str | None = None,
    actor: str = "tuneloop train",
    show_progress: bool = True,
) -> TrainOutcome:
    base_ref = base_model or settings.training.base_model
    base_path = resolve_base_model(base_ref)
    search_summary = None
    search_seconds = 0.0
    if search:
        result = run_search(data, hp, base_path, search, trials, search_space, show_progress)
        tuned, search_summary, search_seconds = result.best, result.summary(), result.seconds
    else:
        result = None
        tuned = fine_tune(data, hp, base_path, show_progress=show_progress)

    # Held-out evaluation: the split's test set first (it names the model's home domain), then extras.
    test_sets = {"test": data.test, **(extra_test_sets or {})}
    metrics: dict[str, EvalMetrics] = {}
    test_logits = None
    for name, split in test_sets.items():
        logits, _ = predict_torch(tuned.model, tuned.tokenizer, split.texts, tuned.hyperparameters.max_length)
        metrics[name] = evaluate_logits(logits, split.labels, data.label_names)
        if name == "test":
            test_logits = logits

    with tempfile.TemporaryDirectory(prefix="tuneloop-stage-") as tmp:
        staging = Path(tmp)
        started = time.perf_counter()
        onnx_files = export_model(tuned.model, tuned.tokenizer, staging, settings.export)
        parity: dict[str, ParityReport] = {}
        for precision, rel in onnx_files.items():
            thresholds = getattr(settings.export, f"parity_{precision}")
            parity[precision] = check_parity(
                staging / rel, rel, precision, tuned.tokenizer, data.test.texts, data.test.labels,
                test_logits, tuned.hyperparameters.max_length, thresholds,
            )
        export_seconds = time.perf_counter() - started
        require_parity(parity)  # nothing reaches the registry unless every graph passed

        tuned.model.save_pretrained(staging / "pytorch")
        tuned.tokenizer.save_pretrained(staging / "tokenizer")
        (staging / "labels.json").write_text(json.dumps({"labels": data.label_names}))
        reference = _reference_sample(tuned, data.validation, settings.training.reference_size, hp.seed)
        np.savez_compressed(staging / "reference.npz", **reference)
        if result is not None:
            (staging / "search").mkdir()
            result.table.to_csv(staging / "search" / "trials.csv", index=False)

        card = ModelCard(
            model_name=model_name or settings.training.model_name,
            base_model=base_ref,
            labels=data.label_names,
            strategy=tuned.hyperparameters.strategy,
            hyperparameters=tuned.hyperparameters.model_dump() | {"epochs_run": tuned.epochs_run,
                                                                    "trainable_share": round(tuned.trainable_share, 4)},
            data=data.files,
            splits=data.sizes,
            metrics=metrics,
            parity=parity,
            onnx_files=onnx_files,
            timings=Timings(train_seconds=round(tuned.train_seconds, 2),
                            train_samples_per_second=round(tuned.train_samples_per_second, 2),
                            export_seconds=round(export_seconds, 2), search_seconds=round(search_seconds, 2)),
            search=search_summary,
            parent_version=parent_version,
            embedding_dim=int(reference["embeddings"].shape[1]),
            max_length=tuned.hyperparameters.max_length,
        )
        registry = Registry(settings.registry)
        version = registry.publish(staging, card, actor=actor, reason="trained and exported")
    # ONNX parity is the gate this command runs; the adapter's retraining loop adds its own gates
    # (no regression on the old test set, a gain on fresh data, latency) before this step.
    registry.transition(version, State.AWAITING_APPROVAL, actor, "ONNX parity passed")
    return TrainOutcome(version=version, card=registry.card(version), state=registry.state(version))
