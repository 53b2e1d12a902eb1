"""Observations of served predictions, and the windows each model version keeps of them: tumbling time windows
held as a bounded uniform sample (the default), or sliding count windows."""

from __future__ import annotations

import random
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


class TimeWindow:
    """Tumbling windows of ``seconds`` of event time, each held as a uniform sample of its predictions.

    The sample is a reservoir (Vitter's algorithm R) of at most ``max_sample`` rows, so a window costs the
    same memory and the same evaluation whatever the traffic. The reservoir decides whether a prediction is
    kept from its timestamp alone (``slot``), before the caller decodes it: the predictions passed over,
    nearly all of them at high traffic, cost a random number each.

    Windows are aligned to multiples of ``seconds``. A prediction timestamped past the open window's end
    closes it (the caller evaluates it, then counts the prediction into the next); one timestamped before its
    start (a late arrival: another partition a few milliseconds behind, or a backlog read partition by
    partition) counts into the open window: it is still traffic to judge, a window late.
    """

    def __init__(self, seconds: float, max_sample: int, rng: random.Random | None = None) -> None:
        if seconds <= 0 or max_sample < 1:
            raise ValueError(f"a time window needs seconds > 0 and max_sample >= 1, got {seconds}, {max_sample}")
        self.seconds = seconds
        self.max_sample = max_sample
        self.start: float | None = None  # the open window's start; None while no prediction opened one
        self.closed_until: float | None = None  # the end of the last window closed (or found empty)
        self.seen = 0  # predictions counted into the open window
        self.last_seen = 0.0
        self._sample: list[Observation] = []
        self._rng = rng or random.Random()

    @property
    def end(self) -> float | None:
        return None if self.start is None else self.start + self.seconds

    def rolls_over(self, timestamp: float) -> bool:
        """True when a prediction at ``timestamp`` falls past the open window: close that one first."""
        return self.start is not None and timestamp >= self.start + self.seconds

    def slot(self, timestamp: float) -> int | None:
        """Count one prediction into the open window (opening one if none is); the sample index its observation
        goes to (``put``), or None when the reservoir passes it over."""
        if self.start is None:
            self.start = timestamp - timestamp % self.seconds
        self.seen += 1
        if timestamp > self.last_seen:
            self.last_seen = timestamp
        if len(self._sample) < self.max_sample:
            return len(self._sample)
        kept = self._rng.randrange(self.seen)
        return kept if kept < self.max_sample else None

    def put(self, slot: int, observation: Observation) -> None:
        if slot == len(self._sample):
            self._sample.append(observation)
        else:
            self._sample[slot] = observation

    def due(self, until: float, grace: float) -> bool:
        """Whether traffic (or the clock) at ``until`` closes the open window, or shows a whole window went by
        without one prediction."""
        if self.start is not None:
            return until >= self.start + self.seconds + grace
        return self.closed_until is not None and until >= self.closed_until + self.seconds + grace

    def next_due(self, grace: float) -> float:
        """The earliest ``until`` at which ``due`` turns true."""
        if self.start is not None:
            return self.start + self.seconds + grace
        if self.closed_until is not None:
            return self.closed_until + self.seconds + grace
        return float("inf")

    def close(self, until: float | None = None) -> tuple[int, WindowData | None]:
        """End the open window: (predictions it counted, its sample as columns or None if empty). Without an
        open window, records an empty one ending before ``until``."""
        if self.start is None:
            if until is not None:
                self.closed_until = until - until % self.seconds
            return 0, None
        seen, rows = self.seen, self._sample
        self.closed_until = self.start + self.seconds
        self.start, self.seen, self._sample = None, 0, []
        return seen, WindowData.from_observations(rows) if rows else None

    def fill(self, minimum: int) -> float:
        """The open window's predictions as a share of the minimum sample for a verdict (capped at 1)."""
        return min(1.0, self.seen / minimum)

    def __len__(self) -> int:
        return len(self._sample)
