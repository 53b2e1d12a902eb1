"""Classification metrics on a held-out set, calibration included."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tuneloop.inference import softmax
from tuneloop.registry import EvalMetrics
from tuneloop.registry.card import ClassMetrics


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |confidence − accuracy| over equal-width confidence bins, weighted by bin size."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def evaluate_logits(logits: np.ndarray, labels: list[int] | np.ndarray, label_names: list[str]) -> EvalMetrics:
    y_true = np.asarray(labels)
    probabilities = softmax(logits)
    y_pred = probabilities.argmax(axis=1)
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return EvalMetrics(
        n=int(len(y_true)),
        accuracy=float((y_true == y_pred).mean()),
        precision_macro=float(precision.mean()),
        recall_macro=float(recall.mean()),
        f1_macro=float(f1.mean()),
        ece=expected_calibration_error(probabilities, y_true),
        per_class={
            name: ClassMetrics(precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
                               support=int(support[i]))
            for i, name in enumerate(label_names)
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    )
