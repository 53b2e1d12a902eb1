"""Running a registered ONNX graph: tokenise, ``session.run``, logits and embeddings.

Shared by the adapter (parity and latency gates) and the service (which adds batching, metrics and
transports on top), so that what is checked before promotion is exactly what is served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer, PreTrainedTokenizerBase


def available_providers() -> list[str]:
    return ort.get_available_providers()


def choose_providers(preference: str = "auto") -> list[str]:
    """CUDA when asked for or when it is there (with onnxruntime-gpu), the CPU otherwise."""
    available = available_providers()
    if preference in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if preference == "cuda":
        raise RuntimeError(f"CUDA execution provider requested but not available (have: {', '.join(available)})")
    return ["CPUExecutionProvider"]


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread per core; inter-op parallelism buys nothing for a single BERT graph.
    options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


@dataclass(frozen=True)
class Encoded:
    feeds: dict[str, np.ndarray]
    truncated: list[bool]


class OnnxTextClassifier:
    """An ONNX Runtime session over a graph with inputs (input_ids, attention_mask[, token_type_ids])
    and outputs (logits, embedding)."""

    def __init__(self, onnx_path: str | Path, tokenizer: PreTrainedTokenizerBase | str | Path, *,
                 max_length: int = 128, providers: list[str] | None = None, intra_op_threads: int = 0) -> None:
        self.tokenizer = (AutoTokenizer.from_pretrained(str(tokenizer))
                          if isinstance(tokenizer, (str, Path)) else tokenizer)
        self.max_length = max_length
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options(intra_op_threads),
            providers=providers or choose_providers(),
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.provider = self.session.get_providers()[0]

    def encode(self, texts: list[str], max_length: int | None = None) -> Encoded:
        limit = max_length or self.max_length
        enc = self.tokenizer(texts, truncation=True, max_length=limit, padding=True, return_tensors="np",
                             return_overflowing_tokens=False, return_length=False)
        feeds = {name: enc[name].astype(np.int64) for name in self.input_names if name in enc}
        # The tokenizer truncates silently. Only a text that fills the limit exactly can have been cut,
        # so only those (rare) are tokenised again in full to tell.
        truncated = [False] * len(texts)
        at_limit = [i for i, n in enumerate(enc["attention_mask"].sum(axis=1)) if n >= limit]
        if at_limit:
            full = self.tokenizer([texts[i] for i in at_limit], truncation=False)["input_ids"]
            for i, ids in zip(at_limit, full):
                truncated[i] = len(ids) > limit
        return Encoded(feeds=feeds, truncated=truncated)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.provider == "CUDAExecutionProvider":
            return self._run_bound(feeds)
        logits, embedding = self.session.run(["logits", "embedding"], feeds)
        return logits.astype(np.float32), embedding.astype(np.float32)

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """On CUDA, IO binding copies each input to the device once and lets ORT place the outputs,
        instead of the extra staging copies ``session.run`` makes."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for name in ("logits", "embedding"):
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        logits, embedding = binding.copy_outputs_to_cpu()
        return logits.astype(np.float32), embedding.astype(np.float32)

    def predict(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings for ``texts`` in order, batched by length to keep padding small."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch_logits, batch_emb = self.run(self.encode([texts[i] for i in idx]).feeds)
            chunks.append((idx, batch_logits, batch_emb))
        n_labels = chunks[0][1].shape[1]
        dim = chunks[0][2].shape[1]
        logits = np.zeros((len(texts), n_labels), dtype=np.float32)
        embeddings = np.zeros((len(texts), dim), dtype=np.float32)
        for idx, batch_logits, batch_emb in chunks:
            logits[idx] = batch_logits
            embeddings[idx] = batch_emb
        return logits, embeddings
