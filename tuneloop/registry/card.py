"""The model card: everything a reader needs to trust a version, stored as ``card.json``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class DataFile(BaseModel):
    path: str
    sha256: str
    rows: int


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class EvalMetrics(BaseModel):
    """Classification quality on one labelled set."""

    n: int
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    ece: float = Field(description="expected calibration error, 15 equal-width confidence bins")
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]] = Field(description="rows: true label, columns: predicted label")


class ParityReport(BaseModel):
    """How an exported ONNX graph compares with the PyTorch model on the test split."""

    precision: str
    file: str
    n: int
    max_abs_logit_diff: float
    label_agreement: float
    accuracy_torch: float
    accuracy_onnx: float
    accuracy_diff: float
    passed: bool
    thresholds: dict[str, float]


class Timings(BaseModel):
    train_seconds: float
    train_samples_per_second: float
    export_seconds: float = 0.0
    search_seconds: float = 0.0


class Lineage(BaseModel):
    """Where a version retrained by the adapter came from: what asked for it, and on what data."""

    run_id: int
    triggers: list[dict[str, Any]] = Field(description="the triggers the retraining answered (kind, detail)")
    parent_version: str | None
    start_from: str = Field(description="production (continual fine-tuning) or base")
    fresh: dict[str, Any] = Field(description="the fresh examples: count, example ids, feedback times, sha256 "
                                              "of each split (train, validation, test)")
    replay: dict[str, Any] = Field(description="the replayed rows of the parent's training data: ratio, count")
    examples_through: int = Field(description="the newest example id this version's lineage trained or "
                                              "tested on: the next retraining's fresh examples come after it")


class GateResult(BaseModel):
    name: str
    passed: bool
    figures: dict[str, Any]
    reasons: list[str] = Field(default_factory=list, description="why it failed, one line each")


class SetComparison(BaseModel):
    """Both versions on one test set, through their ONNX graphs: what an operator compares before approving."""

    production: EvalMetrics
    candidate: EvalMetrics


class GateReport(BaseModel):
    """Every gate's figures and verdict, the candidate against the version in production."""

    against: str = Field(description="the production version it was compared with")
    passed: bool
    results: list[GateResult]
    comparison: dict[str, SetComparison] = Field(
        default_factory=dict, description="test set name (fresh, then production's) → both versions' metrics")

    def reasons(self) -> list[str]:
        return [f"{r.name}: {why}" for r in self.results if not r.passed for why in r.reasons]


class ModelCard(BaseModel):
    model_name: str
    version: str = ""  # filled in by the registry when it publishes the version
    created_at: datetime = Field(default_factory=utc_now)
    base_model: str
    task: str = "text-classification"
    labels: list[str]
    strategy: str
    hyperparameters: dict[str, Any]
    data: list[DataFile]
    splits: dict[str, int]
    metrics: dict[str, EvalMetrics] = Field(description="test-set name → metrics")
    parity: dict[str, ParityReport] = Field(default_factory=dict, description="precision → report")
    onnx_files: dict[str, str] = Field(default_factory=dict, description="precision → file in the version")
    timings: Timings
    search: dict[str, Any] | None = None
    parent_version: str | None = None
    embedding_dim: int | None = None
    max_length: int = 128
    notes: list[str] = Field(default_factory=list)
    datasets: dict[str, str] = Field(default_factory=dict, description="split or test set name → JSONL file "
                                     "of (text, label) rows in the version: its training data, its test sets")
    lineage: Lineage | None = None
    gates: GateReport | None = None
