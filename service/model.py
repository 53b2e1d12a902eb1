"""Loading one registered version for serving: verify, open an ONNX Runtime session, warm up, smoke-check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from service.errors import SwapError
from tuneloop.inference import OnnxTextClassifier, choose_providers
from tuneloop.registry import Registry, RegistryError
from tuneloop.settings import ServingSettings

WARMUP_TEXTS = ["ok", "a short sentence to warm up the session", "a longer sentence " * 12]


@dataclass
class ServedModel:
    model_name: str
    version: str
    labels: list[str]
    classifier: OnnxTextClassifier
    precision: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def provider(self) -> str:
        return self.classifier.provider


def choose_precision(wanted: str, providers: list[str], available: dict[str, str]) -> str:
    """fp16 on a GPU when the version has it; fp32 otherwise. int8 only when asked for: it trades
    about 2% label agreement for speed, a trade an operator makes knowingly."""
    if wanted != "auto":
        return wanted
    if providers[0] == "CUDAExecutionProvider" and "fp16" in available:
        return "fp16"
    return "fp32"


def load_served_model(registry: Registry, version: str, settings: ServingSettings) -> ServedModel:
    """Everything a swap needs before it may happen; raises SwapError naming the failed step."""
    try:
        opened = registry.open_version(version, verify=True)
    except RegistryError as exc:
        raise SwapError(version, "verify", str(exc)) from exc
    providers = choose_providers(settings.provider)
    precision = choose_precision(settings.precision, providers, opened.card.onnx_files)
    try:
        classifier = OnnxTextClassifier(
            opened.onnx_path(precision), opened.tokenizer_dir,
            max_length=min(settings.max_tokens, opened.card.max_length), providers=providers,
            intra_op_threads=settings.intra_op_threads, spinning=settings.ort_spinning,
        )
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise SwapError(version, "load", f"{type(exc).__name__}: {exc}") from exc
    served = ServedModel(model_name=opened.card.model_name, version=version, labels=opened.labels,
                         classifier=classifier, precision=precision)
    try:
        warm_up(served)
    except Exception as exc:  # onnxruntime raises its own types (and MemoryError) per failure
        raise SwapError(version, "warm_up", f"{type(exc).__name__}: {exc}") from exc
    smoke_check(served, opened.reference())
    return served


def warm_up(served: ServedModel) -> None:
    """First runs allocate memory arenas and pick kernels; pay that before taking traffic. A failure here (a
    GPU out of memory while two models are loaded, say) refuses the swap like any other step."""
    for size in (1, 8):
        for text in WARMUP_TEXTS:
            served.classifier.run(served.classifier.encode([text] * size))


def smoke_check(served: ServedModel, reference: dict[str, np.ndarray], n: int = 32,
                min_agreement: float = 0.9) -> None:
    """The loaded graph must reproduce the predictions recorded for the reference sample."""
    texts = [str(t) for t in reference["texts"][:n]]
    if not texts:
        return
    try:
        logits, embedding = served.classifier.predict(texts)
    except Exception as exc:
        raise SwapError(served.version, "smoke_check", f"{type(exc).__name__}: {exc}") from exc
    if logits.shape[1] != len(served.labels) or not np.isfinite(logits).all():
        raise SwapError(served.version, "smoke_check", f"bad logits shape {logits.shape} or non-finite values")
    agreement = float((logits.argmax(axis=1) == reference["predictions"][: len(texts)]).mean())
    if agreement < min_agreement:
        raise SwapError(served.version, "smoke_check",
                        f"agrees with its own reference predictions on {agreement:.0%} (< {min_agreement:.0%})")
