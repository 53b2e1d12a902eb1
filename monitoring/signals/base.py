"""What every drift signal is: a config, and a comparison of a window with a version's reference sample.

A signal is bound to one reference sample (per model version) once, so per-reference work — building the
Evidently dataset, fitting a projection, collecting a vocabulary — is paid once, not per window.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import TestStatus
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift
from pydantic import BaseModel, ConfigDict

from monitoring.reference import ReferenceSample
from monitoring.window import WindowData


class SignalConfig(BaseModel):
    """Options every signal takes; a signal's own config adds to these and sets its defaults."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    method: str
    threshold: float


@dataclass(frozen=True)
class SignalResult:
    signal: str
    score: float
    threshold: float
    detected: bool
    method: str
    snapshot: Snapshot | None  # the Evidently run behind the score, rendered into the evaluation's report


class BoundSignal(ABC):
    """A signal with its reference sample prepared."""

    @abstractmethod
    def evaluate(self, current: WindowData) -> SignalResult | None:
        """Compare one window with the reference; None when the window lacks this signal's input."""


class Signal(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[SignalConfig]]

    def __init__(self, config: SignalConfig) -> None:
        self.config = config

    @abstractmethod
    def bind(self, reference: ReferenceSample) -> BoundSignal:
        """Prepare the comparison with one version's reference sample."""


ColumnKind = Literal["numerical", "categorical"]


def column_dataset(
    values: pd.DataFrame, column: str, kind: ColumnKind, descriptors: list | None = None
) -> Dataset:
    definition = (
        DataDefinition(numerical_columns=[column])
        if kind == "numerical"
        else DataDefinition(categorical_columns=[column])
    )
    return Dataset.from_pandas(values, data_definition=definition, descriptors=descriptors)


def value_drift(
    column: str, current: Dataset, reference: Dataset, method: str, threshold: float
) -> tuple[float, bool, Snapshot]:
    """Evidently's ValueDrift on one column: (score, drift detected, the snapshot).

    The flag is Evidently's own test verdict, so p-value methods (ks, chisquare: drift when the score is
    *below* the threshold) and distance methods (psi, wasserstein: drift when *above*) both come out right.
    """
    metric = ValueDrift(column=column, method=method, threshold=threshold)
    snapshot = Report([metric], include_tests=True).run(current, reference)
    result = snapshot.metric_results[metric.metric_id]
    detected = any(test.status == TestStatus.FAIL for test in result.tests)
    return float(result.value), detected, snapshot
