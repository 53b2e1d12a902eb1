"""Observations of served predictions, and the sliding window each model version keeps of them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Observation:
    """One served prediction, reduced to what the drift signals compare."""

    model_version: str
    embedding: np.ndarray | None  # float32 (d,): the pooled sentence embedding; None when not logged
    probabilities: np.ndarray  # float32 (k,), in the order of the version's labels
    prediction: int
    text: str | None  # None when the service logs hashes or nothing instead of inputs
    timestamp: float  # seconds since the epoch
    text_length: int | None = None  # characters; logged even when the text is not


@dataclass(frozen=True)
class WindowData:
    """Columns of a window (or of a reference sample): the layout of ``ModelVersion.reference()``.

    A column some row lacks is None for the whole window: a signal compares like with like or stays silent.
    """

    embeddings: np.ndarray | None  # float32 (n, d)
    probabilities: np.ndarray  # float32 (n, k)
    predictions: np.ndarray  # int64 (n,)
    texts: np.ndarray | None  # str (n,)
    text_lengths: np.ndarray | None = None  # int64 (n,), characters

    def __len__(self) -> int:
        return int(self.predictions.shape[0])

    @classmethod
    def from_observations(cls, rows: Iterable[Observation]) -> WindowData:
        rows = list(rows)
        texts = [r.text for r in rows]
        lengths = [len(r.text) if r.text is not None else r.text_length for r in rows]
        return cls(
            embeddings=None
            if any(r.embedding is None for r in rows)
            else np.stack([r.embedding for r in rows]).astype(np.float32, copy=False),
            probabilities=np.stack([r.probabilities for r in rows]).astype(np.float32, copy=False),
            predictions=np.fromiter((r.prediction for r in rows), dtype=np.int64, count=len(rows)),
            texts=None if any(t is None for t in texts) else np.array(texts, dtype=str),
            text_lengths=None if any(n is None for n in lengths) else np.array(lengths, dtype=np.int64),
        )

    @classmethod
    def from_reference(cls, arrays: Mapping[str, np.ndarray]) -> WindowData:
        texts = arrays.get("texts")
        texts = None if texts is None else np.asarray(texts, dtype=str)
        return cls(
            embeddings=np.asarray(arrays["embeddings"], dtype=np.float32),
            probabilities=np.asarray(arrays["probabilities"], dtype=np.float32),
            predictions=np.asarray(arrays["predictions"], dtype=np.int64),
            texts=texts,
            text_lengths=None if texts is None else np.array([len(t) for t in texts], dtype=np.int64),
        )


class SlidingWindow:
    """The last ``size`` observations of one model version; due for evaluation every ``step`` new ones.

    The first evaluation waits for a full window: a half-filled window against a full reference would
    raise drift from sampling noise alone.
    """

    def __init__(self, size: int, step: int) -> None:
        if size < 2 or step < 1:
            raise ValueError(f"window size must be >= 2 and step >= 1, got size={size} step={step}")
        self.size = size
        self.step = step
        self._rows: deque[Observation] = deque(maxlen=size)
        self._since_evaluation = 0
        self._evaluated_once = False
        self.last_seen = 0.0

    def add(self, observation: Observation) -> bool:
        """Append one observation; True when the window is due for evaluation."""
        self._rows.append(observation)
        self._since_evaluation += 1
        self.last_seen = observation.timestamp
        if len(self._rows) < self.size:
            return False
        if not self._evaluated_once:
            return True
        return self._since_evaluation >= self.step

    def fill(self) -> float:
        """Share of the window filled: rows held until the first evaluation, then progress to the next one."""
        if not self._evaluated_once:
            return len(self._rows) / self.size
        return min(1.0, self._since_evaluation / self.step)

    def snapshot(self) -> WindowData:
        """The window's rows as columns; resets the step counter (the caller evaluates them now)."""
        self._since_evaluation = 0
        self._evaluated_once = True
        return WindowData.from_observations(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
