"""Confidence drift: is the model as sure of itself as on the reference sample (top-class probability)?

Unfamiliar inputs often move the confidence before they move the label shares.
"""

from __future__ import annotations

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

COLUMN = "confidence"


class ConfidenceConfig(SignalConfig):
    method: str = "wasserstein"  # any Evidently numerical drift method: wasserstein (normed), ks, psi, ...
    threshold: float = 0.4  # as MonitorSettings.DEFAULT_SIGNALS, where the measured reason is


class ConfidenceSignal(Signal):
    name = "confidence"
    Config = ConfidenceConfig

    def bind(self, reference: ReferenceSample) -> BoundSignal:
        return _BoundConfidence(self, reference)


def _frame(data: WindowData) -> pd.DataFrame:
    return pd.DataFrame({COLUMN: data.probabilities.max(axis=1).astype(float)})


class _BoundConfidence(BoundSignal):
    def __init__(self, signal: ConfidenceSignal, reference: ReferenceSample) -> None:
        self.signal = signal
        self.reference = column_dataset(_frame(reference.data), COLUMN, "numerical")

    def evaluate(self, current: WindowData) -> SignalResult:
        c = self.signal.config
        score, detected, snapshot = value_drift(
            COLUMN,
            column_dataset(_frame(current), COLUMN, "numerical"),
            self.reference,
            c.method,
            c.threshold,
        )
        return SignalResult(self.signal.name, score, c.threshold, detected, c.method, snapshot)
