"""Embedding drift: are the live sentence embeddings distinguishable from the reference sample's?

The score comes from Evidently's embedding drift methods (the ``DriftMethod`` objects that
``evidently.metrics.EmbeddingsDrift`` runs): by default ``model``, the ROC AUC of a classifier trained to tell
window rows from reference rows (0.5 = indistinguishable).

The report shows the distribution of the window against the reference along the reference's top principal
components (ValueDrift per component). ``report: tsne`` instead runs the full ``EmbeddingsDrift`` metric,
whose t-SNE map costs 5-30 s per window on 2 shared cores (measured): for a one-off look, not for a
monitor that runs all day.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import EmbeddingsDrift, ValueDrift
from evidently.metrics.embeddings import (
    DistanceDriftMethod,
    MMDDriftMethod,
    ModelDriftMethod,
    RatioDriftMethod,
)
from sklearn.decomposition import PCA

from monitoring.reference import ReferenceSample
from monitoring.signals.base import BoundSignal, Signal, SignalConfig, SignalResult
from monitoring.window import WindowData


class EmbeddingConfig(SignalConfig):
    method: Literal["model", "mmd", "distance", "ratio"] = "model"
    threshold: float = 0.7
    pca_components: int | None = None  # reduce the embeddings before the method sees them
    distance: Literal["euclidean", "cosine", "cityblock", "chebyshev"] = "euclidean"  # method "distance" only
    bootstrap: bool = False  # let Evidently derive the threshold from bootstrap samples of the reference
    report: Literal["pca", "tsne"] = "pca"
    report_components: int = 2


class EmbeddingSignal(Signal):
    name = "embedding"
    Config = EmbeddingConfig

    def __init__(self, config: EmbeddingConfig) -> None:
        super().__init__(config)
        self.config: EmbeddingConfig = config

    def drift_method(self):
        c = self.config
        if c.method == "model":
            return ModelDriftMethod(
                threshold=c.threshold, bootstrap=c.bootstrap, pca_components=c.pca_components
            )
        if c.method == "mmd":
            return MMDDriftMethod(
                threshold=c.threshold, bootstrap=c.bootstrap, pca_components=c.pca_components
            )
        if c.method == "distance":
            return DistanceDriftMethod(
                dist=c.distance, threshold=c.threshold, bootstrap=c.bootstrap, pca_components=c.pca_components
            )
        return RatioDriftMethod(threshold=c.threshold, pca_components=c.pca_components)

    def bind(self, reference: ReferenceSample) -> BoundSignal:
        return _BoundEmbedding(self, reference)


def _frame(embeddings: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(embeddings, columns=[f"e{i}" for i in range(embeddings.shape[1])])


class _BoundEmbedding(BoundSignal):
    def __init__(self, signal: EmbeddingSignal, reference: ReferenceSample) -> None:
        self.signal = signal
        self.config = signal.config
        self.method = signal.drift_method()
        self.reference = _frame(reference.data.embeddings)
        if self.config.report == "tsne":
            columns = list(self.reference.columns)
            self._definition = DataDefinition(numerical_columns=columns, embeddings={"embedding": columns})
            self._reference_ds = Dataset.from_pandas(self.reference, data_definition=self._definition)
        else:
            k = min(self.config.report_components, *reference.data.embeddings.shape)
            self.pca = PCA(n_components=k, random_state=0).fit(reference.data.embeddings)
            self._pcs = [f"embedding_pc{i + 1}" for i in range(k)]
            projected = pd.DataFrame(self.pca.transform(reference.data.embeddings), columns=self._pcs)
            self._reference_ds = Dataset.from_pandas(
                projected, data_definition=DataDefinition(numerical_columns=self._pcs)
            )

    def evaluate(self, current: WindowData) -> SignalResult | None:
        if current.embeddings is None:  # the service runs with kafka.log_embeddings off
            return None
        if current.embeddings.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"window embeddings have {current.embeddings.shape[1]} dimensions, "
                f"the reference {self.reference.shape[1]}"
            )
        frame = _frame(current.embeddings)
        # Evidently's methods add a target column to the frames they get: hand them copies.
        score, detected, _ = self.method(frame.copy(), self.reference.copy())
        snapshot = self._report(frame, current)
        return SignalResult(
            self.signal.name,
            float(score),
            self.config.threshold,
            bool(detected),
            self.config.method,
            snapshot,
        )

    def _report(self, frame: pd.DataFrame, current: WindowData):
        if self.config.report == "tsne":
            current_ds = Dataset.from_pandas(frame, data_definition=self._definition)
            metric = EmbeddingsDrift(embeddings_name="embedding", drift_method=self.method)
            return Report([metric]).run(current_ds, self._reference_ds)
        projected = pd.DataFrame(self.pca.transform(current.embeddings), columns=self._pcs)
        current_ds = Dataset.from_pandas(
            projected, data_definition=DataDefinition(numerical_columns=self._pcs)
        )
        # Only for the operator's eye: the score above is what decides.
        return Report([ValueDrift(column=pc, method="wasserstein") for pc in self._pcs]).run(
            current_ds, self._reference_ds
        )
