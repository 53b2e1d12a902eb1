"""Does the exported graph decide like the PyTorch model it came from?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from adapter.errors import ParityError
from tuneloop.inference import OnnxTextClassifier, choose_providers
from tuneloop.registry import ParityReport
from tuneloop.settings import ParityThresholds


def check_parity(onnx_path: Path, rel_path: str, precision: str, tokenizer: PreTrainedTokenizerBase,
                 texts: list[str], labels: list[int], torch_logits: np.ndarray, max_length: int,
                 thresholds: ParityThresholds) -> ParityReport:
    # fp16 graphs are built for the GPU; without one they still run (slowly) on the CPU provider.
    classifier = OnnxTextClassifier(onnx_path, tokenizer, max_length=max_length, providers=choose_providers())
    onnx_logits, _ = classifier.predict(texts)
    y = np.asarray(labels)
    torch_pred = torch_logits.argmax(axis=1)
    onnx_pred = onnx_logits.argmax(axis=1)
    acc_torch = float((torch_pred == y).mean())
    acc_onnx = float((onnx_pred == y).mean())
    report = ParityReport(
        precision=precision, file=rel_path, n=len(texts),
        max_abs_logit_diff=float(np.abs(onnx_logits - torch_logits).max()),
        label_agreement=float((torch_pred == onnx_pred).mean()),
        accuracy_torch=acc_torch, accuracy_onnx=acc_onnx, accuracy_diff=acc_onnx - acc_torch,
        passed=False, thresholds=thresholds.model_dump(),
    )
    passed = (report.max_abs_logit_diff <= thresholds.max_abs_logit_diff
              and report.label_agreement >= thresholds.min_label_agreement
              and -report.accuracy_diff <= thresholds.max_accuracy_drop)
    return report.model_copy(update={"passed": passed})


def require_parity(reports: dict[str, ParityReport]) -> None:
    failed = [r for r in reports.values() if not r.passed]
    if failed:
        lines = "; ".join(
            f"{r.precision}: max|Δlogit| {r.max_abs_logit_diff:.2e} (≤ {r.thresholds['max_abs_logit_diff']}), "
            f"agreement {r.label_agreement:.4f} (≥ {r.thresholds['min_label_agreement']}), "
            f"Δaccuracy {r.accuracy_diff:+.4f} (drop ≤ {r.thresholds['max_accuracy_drop']})"
            for r in failed
        )
        raise ParityError(f"export refused, ONNX parity failed — {lines}")
