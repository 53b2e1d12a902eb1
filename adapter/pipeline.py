"""Fine-tune (or search) → evaluate on held-out test sets → export ONNX → check parity → register a candidate.

Each step is a function of its own, so that ``tuneloop train`` and the adapter's retraining compose the
same steps; ``train_candidate`` runs them all. A new version is always registered as a ``candidate``: what
happens next is the caller's decision (``tuneloop train`` sends it for approval, the adapter runs its gates).
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
from adapter.training.base_model import BaseModelSource, resolve_base_model
from adapter.training.classifier import predict_torch
from adapter.training.data import LabelledData, Split
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.metrics import evaluate_logits
from adapter.training.search import SearchConfig, SearchResult, run_search
from adapter.training.trainer import FineTuned, fine_tune
from tuneloop.inference import softmax
from tuneloop.registry import EvalMetrics, ModelCard, ParityReport, Registry, State, Timings
from tuneloop.settings import ExportSettings, Settings

HOME_TEST_SET = "test"  # the split's own test set: it names the model's home domain


@dataclass
class TrainOutcome:
    version: str
    card: ModelCard
    state: State


@dataclass
class Fitted:
    """The fine-tuned model, and the search that chose it, if one ran."""

    tuned: FineTuned
    search: SearchResult | None = None


@dataclass
class Evaluation:
    metrics: dict[str, EvalMetrics]  # test-set name → metrics, the home test set first
    logits: dict[str, np.ndarray]


@dataclass
class Exported:
    onnx_files: dict[str, str]  # precision → path in the staging folder
    parity: dict[str, ParityReport]
    seconds: float


def fit(data: LabelledData, hp: Hyperparameters, base: BaseModelSource, search: SearchConfig | None = None,
        show_progress: bool = True) -> Fitted:
    """One fine-tuning run, or a search whose best trial is kept."""
    if search is None:
        return Fitted(fine_tune(data, hp, base, show_progress=show_progress))
    result = run_search(data, hp, base, search, show_progress)
    return Fitted(result.best, result)


def evaluate(tuned: FineTuned, test_sets: dict[str, Split], label_names: list[str]) -> Evaluation:
    metrics, logits = {}, {}
    for name, split in test_sets.items():
        logits[name], _ = predict_torch(tuned.model, tuned.tokenizer, split.texts, tuned.hyperparameters.max_length)
        metrics[name] = evaluate_logits(logits[name], split.labels, label_names)
    return Evaluation(metrics, logits)


def reference_sample(tuned: FineTuned, split: Split, size: int, seed: int) -> dict[str, np.ndarray]:
    """Validation texts with the model's embeddings and predictions: what "no drift" looks like."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(split))[:size])
    texts = [split.texts[i] for i in idx]
    logits, embeddings = predict_torch(tuned.model, tuned.tokenizer, texts, tuned.hyperparameters.max_length)
    probabilities = softmax(logits)
    return {
        "texts": np.asarray(texts, dtype=np.str_),
        "labels": np.asarray([split.labels[i] for i in idx], dtype=np.int64),
        "predictions": probabilities.argmax(axis=1).astype(np.int64),
        "probabilities": probabilities,
        "embeddings": embeddings,
    }


def export_with_parity(tuned: FineTuned, staging: Path, settings: ExportSettings, split: Split,
                       torch_logits: np.ndarray) -> Exported:
    """Write the ONNX graphs into ``staging`` and compare each with PyTorch on ``split`` (whose logits PyTorch
    gave as ``torch_logits``). The reports say whether each passed; ``require_parity`` refuses failures."""
    started = time.perf_counter()
    onnx_files = export_model(tuned.model, tuned.tokenizer, staging, settings)
    parity = {
        precision: check_parity(staging / rel, rel, precision, tuned.tokenizer, split.texts, split.labels,
                                torch_logits, tuned.hyperparameters.max_length,
                                getattr(settings, f"parity_{precision}"))
        for precision, rel in onnx_files.items()
    }
    return Exported(onnx_files, parity, time.perf_counter() - started)


def save_datasets(staging: Path, data: LabelledData, test_sets: dict[str, Split], kept_train_rows: int,
                  seed: int) -> dict[str, str]:
    """What a version was trained and tested on, kept in it as JSONL (text, label name): its training rows (a
    seeded sample of ``kept_train_rows`` at most) are what its successors replay so as not to forget them, its
    test sets are the golden sets their gates hold them to. Returns name → path in the version."""
    folder = staging / "datasets"
    folder.mkdir()
    train = data.train
    if len(train) > kept_train_rows:
        keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:kept_train_rows])
        train = Split([train.texts[i] for i in keep], [train.labels[i] for i in keep])
    written = {}
    for name, split in {"train": train, **test_sets}.items():
        rel = f"datasets/{_file_name(name)}.jsonl"
        with open(staging / rel, "w", encoding="utf-8") as handle:
            for text, label in zip(split.texts, split.labels):
                handle.write(json.dumps({"text": text, "label": data.label_names[label]}, ensure_ascii=False) + "\n")
        written[name] = rel
    return written


def _file_name(name: str) -> str:
    """A test set's name as a file name: golden sets carried over from a parent are named like v1/test."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def save_model_files(fitted: Fitted, label_names: list[str], staging: Path, reference: dict[str, np.ndarray]) -> None:
    """What a version holds beside its graphs and datasets: weights and tokenizer (to continue training from
    it), labels, the drift reference, and the search's trials."""
    fitted.tuned.model.save_pretrained(staging / "pytorch")
    fitted.tuned.tokenizer.save_pretrained(staging / "tokenizer")
    (staging / "labels.json").write_text(json.dumps({"labels": label_names}))
    np.savez_compressed(staging / "reference.npz", **reference)
    if fitted.search is not None:
        (staging / "search").mkdir()
        fitted.search.table.to_csv(staging / "search" / "trials.csv", index=False)


def model_card(fitted: Fitted, data: LabelledData, base: BaseModelSource, evaluation: Evaluation,
               exported: Exported, model_name: str, embedding_dim: int, datasets: dict[str, str]) -> ModelCard:
    tuned, hp = fitted.tuned, fitted.tuned.hyperparameters
    return ModelCard(
        model_name=model_name,
        base_model=base.pretrained,
        labels=data.label_names,
        strategy=hp.strategy.name.value,
        hyperparameters=hp.model_dump(mode="json") | {"epochs_run": tuned.epochs_run,
                                                      "trainable_share": round(tuned.trainable_share, 4)},
        data=data.files,
        splits=data.sizes,
        metrics=evaluation.metrics,
        parity=exported.parity,
        onnx_files=exported.onnx_files,
        timings=Timings(train_seconds=round(tuned.train_seconds, 2),
                        train_samples_per_second=round(tuned.train_samples_per_second, 2),
                        export_seconds=round(exported.seconds, 2),
                        search_seconds=round(fitted.search.seconds, 2) if fitted.search else 0.0),
        search=fitted.search.summary() if fitted.search else None,
        parent_version=base.parent_version,
        embedding_dim=embedding_dim,
        max_length=hp.max_length,
        datasets=datasets,
    )


def train_candidate(
    data: LabelledData,
    hp: Hyperparameters,
    settings: Settings,
    *,
    base_model: str | None = None,
    model_name: str | None = None,
    extra_test_sets: dict[str, Split] | None = None,
    search: SearchConfig | None = None,
    actor: str = "tuneloop train",
    show_progress: bool = True,
) -> TrainOutcome:
    """Every step, then the version is registered as a ``candidate``. Nothing reaches the registry unless
    every ONNX graph passed parity (``ParityError``)."""
    registry = Registry(settings.registry)
    base = resolve_base_model(base_model or settings.training.base_model, registry)
    fitted = fit(data, hp, base, search, show_progress)
    test_sets = {HOME_TEST_SET: data.test, **(extra_test_sets or {})}
    evaluation = evaluate(fitted.tuned, test_sets, data.label_names)
    with tempfile.TemporaryDirectory(prefix="tuneloop-stage-") as tmp:
        staging = Path(tmp)
        exported = export_with_parity(fitted.tuned, staging, settings.export, data.test,
                                      evaluation.logits[HOME_TEST_SET])
        require_parity(exported.parity)
        reference = reference_sample(fitted.tuned, data.validation, settings.training.reference_size, hp.seed)
        save_model_files(fitted, data.label_names, staging, reference)
        datasets = save_datasets(staging, data, test_sets, settings.training.kept_train_rows, hp.seed)
        card = model_card(fitted, data, base, evaluation, exported, model_name or settings.training.model_name,
                          embedding_dim=int(reference["embeddings"].shape[1]), datasets=datasets)
        version = registry.publish(staging, card, actor=actor, reason="trained and exported")
    return TrainOutcome(version=version, card=registry.card(version), state=registry.state(version))
