"""Running a registered ONNX graph: tokenise, ``session.run``, logits and embeddings.

Shared by the adapter (parity and latency gates) and the service (which adds batching, metrics and
transports on top), so that what is checked before promotion is exactly what is served.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tuneloop.settings import Spinning

log = logging.getLogger(__name__)

# What every exported graph answers, in this order (adapter/export/onnx_export.py writes them).
OUTPUT_NAMES = ("logits", "embedding")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities per row: computed in float64 so that large logits neither overflow nor lose the
    small probabilities, returned as float32 like every other array the service hands out. Written out rather
    than scipy's, whose array-API dispatch cost twice the arithmetic on a batch's few rows (7 against 13 µs),
    once per bucket on the batcher's thread."""
    shifted = logits.astype(np.float64)
    shifted -= shifted.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted.astype(np.float32)


def available_providers() -> list[str]:
    return ort.get_available_providers()


@cache
def preload_cuda_libraries() -> None:
    """onnxruntime-gpu links cuBLAS, cuDNN and the CUDA runtime but does not find them by itself in the
    ``nvidia-*`` wheels pip installs beside it (unless torch was imported first); without them the CUDA
    provider fails to load and ONNX Runtime quietly runs on the CPU instead."""
    try:
        ort.preload_dlls()
    except Exception as exc:  # a partial CUDA install: the session reports what it could load
        log.warning("could not preload CUDA libraries for ONNX Runtime: %s", exc)


def choose_providers(preference: str = "auto") -> list[str]:
    """CUDA when asked for or when it is there (with onnxruntime-gpu), the CPU otherwise."""
    available = available_providers()
    if preference in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        preload_cuda_libraries()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if preference == "cuda":
        raise RuntimeError(f"CUDA execution provider requested but not available (have: {', '.join(available)})")
    return ["CPUExecutionProvider"]


# The CUDA provider runs fp32 matrix products in TF32 by default, which moves BERT's logits by ~1e-3 and
# fails the fp32 parity gate (measured on an H100). fp32 means fp32 here; the fast GPU graph is fp16.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def session_options(intra_op_threads: int = 0, spinning: Spinning = "always") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread per core; inter-op parallelism buys nothing for a single BERT graph.
    options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads pick up each operator of a run without a wake-up (+13% requests/s for lone requests),
    # but spinning between runs burns the cores the service's event loop needs then: the service spins
    # "during_runs" (bench/RESULTS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "off" else "1")
    options.add_session_config_entry("session.force_spinning_stop", "1" if spinning == "during_runs" else "0")
    return options


@dataclass(frozen=True)
class Tokenized:
    """Token ids per text, unpadded, and whether truncation cut the text."""

    ids: list[list[int]]
    truncated: list[bool]

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass(frozen=True)
class BucketRun:
    """One session run over one length bucket: which texts it held (indices into the tokenised batch), what
    came out for them, and how long ``session.run`` itself took (padding the inputs not included)."""

    rows: np.ndarray
    logits: np.ndarray
    embeddings: np.ndarray
    seconds: float


# What one session run costs beyond its rows, in padded tokens, by provider (bench/RESULTS.md). On two CPU
# cores a run costs about what 16 tokens do, so splitting a batch by length pays. On an H100 a run of 32
# texts × 128 tokens costs barely more than one of a few short texts: splitting only multiplies the runs
# (3.5× fewer texts/s measured with the CPU's figure), so at this size a batch is never split there.
RUN_OVERHEAD_TOKENS = {"CPUExecutionProvider": 16, "CUDAExecutionProvider": 4096}

# The most texts one batch takes, by provider, where ``serving.max_batch_size`` is not set. Two CPU cores gain
# nothing past 32 (a run's cost grows with its rows), while on an H200 a batch of 128 MiniLM texts costs about
# what one text does: there the cap only limits what load can fill (bench/RESULTS.md).
MAX_BATCH_TEXTS = {"CPUExecutionProvider": 32, "CUDAExecutionProvider": 256}


def plan_length_buckets(lengths: np.ndarray, max_batch: int,
                        run_overhead_tokens: int = RUN_OVERHEAD_TOKENS["CPUExecutionProvider"]) -> list[np.ndarray]:
    """Cut texts into batches that waste little padding.

    Sorted by length, then split where it pays: a batch costs one run's fixed overhead (expressed in
    padded tokens) plus rows × its longest row. Dynamic programming over the sorted lengths finds the
    cheapest cut, each step vectorised over the candidate starts, so a batch of 256 plans in about a
    millisecond. The overhead of 16 tokens measured best among 4–256 on MiniLM-L6 with two CPU threads
    (bench/RESULTS.md).
    """
    order = np.argsort(lengths, kind="stable")
    sorted_len = np.asarray(lengths, dtype=np.float64)[order]
    n = len(order)
    if n == 0:
        return []
    # Any split pays a second run's overhead and saves at most the whole batch's padding: when the overhead
    # is the larger, one bucket is the optimum (a GPU's batch, nearly always) and the search is skipped.
    if n <= max_batch and run_overhead_tokens >= n * sorted_len[-1] - sorted_len.sum():
        return [order]
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        first = max(0, end - max_batch)
        starts = np.arange(first, end)
        costs = best[first:end] + run_overhead_tokens + (end - starts) * sorted_len[end - 1]
        k = int(np.argmin(costs))
        best[end], cut[end] = costs[k], first + k
    buckets, end = [], n
    while end > 0:
        buckets.append(order[cut[end]:end])
        end = cut[end]
    return buckets[::-1]


def truncating_encoder(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Tokenizer | None:
    """The Rust tokenizer behind a fast tokenizer, set to cut at ``max_length`` and never pad; None for a slow
    one. It gives the ids transformers' ``__call__`` gives (tests/inference), and whether a text was cut (its
    ``overflowing`` part), for about half the CPU: the wrapper's own Python cost more than the encoding
    of a short text."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    encoder = copy.deepcopy(tokenizer.backend_tokenizer)
    encoder.no_padding()
    encoder.enable_truncation(max_length=max_length)
    return encoder


class OnnxTextClassifier:
    """An ONNX Runtime session over a graph with inputs (input_ids, attention_mask[, token_type_ids])
    and outputs (logits, embedding)."""

    def __init__(self, onnx_path: str | Path, tokenizer: PreTrainedTokenizerBase | str | Path, *,
                 max_length: int = 128, providers: list[str] | None = None, intra_op_threads: int = 0,
                 spinning: Spinning = "always") -> None:
        self.tokenizer = (AutoTokenizer.from_pretrained(str(tokenizer))
                          if isinstance(tokenizer, (str, Path)) else tokenizer)
        self.max_length = max_length
        providers = providers or choose_providers()
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options(intra_op_threads, spinning),
            providers=[(name, PROVIDER_OPTIONS.get(name, {})) for name in providers],
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.provider = self.session.get_providers()[0]
        if providers[0] != self.provider:
            log.warning("asked for %s but ONNX Runtime runs %s on %s (see its log for why)",
                        providers[0], onnx_path, self.provider)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._encoder = truncating_encoder(self.tokenizer, max_length)
        # Our exports fix every dimension but the batch (labels, the encoder's hidden size), so callers can
        # size their output arrays before the first run.
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.num_labels = int(outputs["logits"][1])
        self.embedding_dim = int(outputs["embedding"][1])

    @property
    def run_overhead_tokens(self) -> int:
        """This session's provider's run cost (a provider not measured yet is taken as a CPU)."""
        return RUN_OVERHEAD_TOKENS.get(self.provider, RUN_OVERHEAD_TOKENS["CPUExecutionProvider"])

    def plan_buckets(self, tokens: Tokenized, max_batch: int, run_overhead_tokens: int | None = None
                     ) -> list[np.ndarray]:
        """``plan_length_buckets`` with this session's provider's run overhead unless one is given."""
        overhead = self.run_overhead_tokens if run_overhead_tokens is None else run_overhead_tokens
        return plan_length_buckets(tokens.lengths(), max_batch, overhead)

    def tokenize(self, texts: list[str]) -> Tokenized:
        if self._encoder is not None:
            encodings = self._encoder.encode_batch(texts)
            return Tokenized(ids=[e.ids for e in encodings], truncated=[bool(e.overflowing) for e in encodings])
        limit = self.max_length
        ids = self.tokenizer(texts, truncation=True, max_length=limit, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"]
        # The tokenizer truncates silently. Only a text that fills the limit exactly can have been cut,
        # so only those (rare) are tokenised again in full to tell.
        truncated = [False] * len(texts)
        at_limit = [i for i, row in enumerate(ids) if len(row) >= limit]
        if at_limit:
            full = self.tokenizer([texts[i] for i in at_limit], truncation=False)["input_ids"]
            for i, row in zip(at_limit, full):
                truncated[i] = len(row) > limit
        return Tokenized(ids=ids, truncated=truncated)

    def feeds(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        """Pad ``rows`` to their longest and build the graph's inputs."""
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention[i, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return feeds

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.feeds(self.tokenize(texts).ids)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.provider == "CUDAExecutionProvider":
            return self._run_bound(feeds)
        logits, embedding = self.session.run(OUTPUT_NAMES, feeds)
        return logits.astype(np.float32, copy=False), embedding.astype(np.float32, copy=False)

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """On CUDA, IO binding copies each input to the device once and lets ORT place the outputs,
        instead of the extra staging copies ``session.run`` makes."""
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        logits, embedding = binding.copy_outputs_to_cpu()
        return logits.astype(np.float32, copy=False), embedding.astype(np.float32, copy=False)

    def run_buckets(self, tokens: Tokenized, max_batch: int, run_overhead_tokens: int | None = None
                    ) -> Iterator[BucketRun]:
        """Run ``tokens`` one length bucket at a time (``plan_buckets``, shortest first), padding each bucket
        to its longest text; each run is yielded as soon as it is done."""
        for idx in self.plan_buckets(tokens, max_batch, run_overhead_tokens):
            feeds = self.feeds([tokens.ids[i] for i in idx])
            began = time.perf_counter()
            logits, embeddings = self.run(feeds)
            yield BucketRun(idx, logits, embeddings, time.perf_counter() - began)

    def predict(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings for ``texts`` in order, batched by length to keep padding small."""
        logits = np.empty((len(texts), self.num_labels), dtype=np.float32)
        embeddings = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        for run in self.run_buckets(self.tokenize(texts), batch_size):
            logits[run.rows] = run.logits
            embeddings[run.rows] = run.embeddings
        return logits, embeddings
