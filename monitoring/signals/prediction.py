"""Prediction drift: do the predicted labels come in other shares than on the reference sample?"""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring.reference import ReferenceSample
from monitoring.signals.base import (
    BoundSignal,
    Signal,
    SignalConfig,
    SignalResult,
    column_dataset,
    value_drift,
)
from monitoring.window import WindowData

COLUMN = "predicted_label"


class PredictionConfig(SignalConfig):
    method: str = "psi"  # any Evidently categorical drift method: psi, jensenshannon, chisquare, ...
    threshold: float = 0.15  # as MonitorSettings.DEFAULT_SIGNALS, where the measured reason is


class PredictionSignal(Signal):
    name = "prediction"
    Config = PredictionConfig

    def bind(self, reference: ReferenceSample) -> BoundSignal:
        return _BoundPrediction(self, reference)


def label_names(predictions: np.ndarray, labels: list[str]) -> pd.Series:
    # Names, not ids, so the report reads "positive 48% → 71%"; an id the card does not know stays visible.
    return pd.Series(
        [labels[i] if 0 <= i < len(labels) else str(i) for i in predictions.tolist()], dtype=object
    )


class _BoundPrediction(BoundSignal):
    def __init__(self, signal: PredictionSignal, reference: ReferenceSample) -> None:
        self.signal = signal
        self.labels = reference.labels
        self.reference = column_dataset(
            pd.DataFrame({COLUMN: label_names(reference.data.predictions, self.labels)}),
            COLUMN,
            "categorical",
        )

    def evaluate(self, current: WindowData) -> SignalResult:
        frame = pd.DataFrame({COLUMN: label_names(current.predictions, self.labels)})
        c = self.signal.config
        score, detected, snapshot = value_drift(
            COLUMN, column_dataset(frame, COLUMN, "categorical"), self.reference, c.method, c.threshold
        )
        return SignalResult(self.signal.name, score, c.threshold, detected, c.method, snapshot)
