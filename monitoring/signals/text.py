"""Text drift: do the live inputs look like the reference texts? Two signals, two descriptors.

``text_length`` compares characters per text; it works with hashed inputs too (events carry the length).

``text_oov`` compares the share of a text's words that the reference texts never use. Why this vocabulary:
the tokenizer's WordPiece vocabulary splits any unknown word into known pieces, so its [UNK] share stays
near 0 whatever comes in; Evidently's ``OOVWordsPercentage`` downloads NLTK corpora at run time (no network
here) and measures "is it English", not "is it what this model was validated on". The reference vocabulary
answers the latter. Each reference text is scored against the vocabulary of the *other* reference texts
(leave-one-out): scored against its own words every reference text would have 0% OOV, and any traffic
would look drifted.

``text_oov`` needs logged texts (``kafka.log_inputs: text``); with hashes or nothing logged it stays silent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import pandas as pd
from evidently import ColumnType, DataDefinition, Dataset
from evidently.core.datasets import DatasetColumn
from evidently.descriptors import CustomColumnDescriptor

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

TEXT = "text"
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters/digits, keeping "don't" whole


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Vocabulary:
    """Document frequencies of the reference texts' words."""

    def __init__(self, texts: list[str]) -> None:
        self.document_frequency = Counter(w for t in texts for w in set(words(t)))

    def oov_share(self, text: str, leave_out_self: bool = False) -> float:
        tokens = words(text)
        if not tokens:
            return 0.0
        own = 1 if leave_out_self else 0  # a reference text's own words counted once in its frequencies
        return sum(1 for w in tokens if self.document_frequency[w] - own <= 0) / len(tokens)

    def descriptor(self, leave_out_self: bool, alias: str) -> CustomColumnDescriptor:
        def oov(column: DatasetColumn) -> DatasetColumn:
            shares = column.data.fillna("").astype(str).map(lambda t: self.oov_share(t, leave_out_self))
            return DatasetColumn(type=ColumnType.Numerical, data=shares.astype(float))

        return CustomColumnDescriptor(TEXT, oov, alias=alias)


class TextLengthConfig(SignalConfig):
    method: str = "wasserstein"
    threshold: float = 0.35


class TextOovConfig(SignalConfig):
    method: str = "wasserstein"
    threshold: float = 0.35


def _text_dataset(texts, descriptor) -> Dataset:
    return Dataset.from_pandas(
        pd.DataFrame({TEXT: pd.Series(texts, dtype=object)}),
        data_definition=DataDefinition(text_columns=[TEXT]),
        descriptors=[descriptor],
    )


class _BoundTextDescriptor(BoundSignal):
    """Drift of one per-text descriptor; the reference and the window may need different descriptors."""

    def __init__(
        self,
        signal: Signal,
        column: str,
        reference_texts,
        reference_descriptor,
        current_descriptor: Callable[[], object],
    ) -> None:
        self.signal = signal
        self.column = column
        self.current_descriptor = current_descriptor
        self.reference = (
            None if reference_texts is None else _text_dataset(reference_texts, reference_descriptor)
        )

    def evaluate(self, current: WindowData) -> SignalResult | None:
        if self.reference is None or current.texts is None:
            return None
        c = self.signal.config
        current_ds = _text_dataset(current.texts, self.current_descriptor())
        score, detected, snapshot = value_drift(
            self.column, current_ds, self.reference, c.method, c.threshold
        )
        return SignalResult(self.signal.name, score, c.threshold, detected, c.method, snapshot)


class TextLengthSignal(Signal):
    name = "text_length"
    Config = TextLengthConfig

    def bind(self, reference: ReferenceSample) -> BoundSignal:
        return _BoundTextLength(self, reference)


class _BoundTextLength(BoundSignal):
    """Characters per text, from the text or, when only hashes are logged, from the event's ``text_length``
    (the same count Evidently's ``TextLength`` descriptor makes)."""

    column = "text_length"

    def __init__(self, signal: TextLengthSignal, reference: ReferenceSample) -> None:
        self.signal = signal
        lengths = reference.data.text_lengths
        self.reference = None if lengths is None else self._dataset(lengths)

    def _dataset(self, lengths) -> Dataset:
        return column_dataset(pd.DataFrame({self.column: lengths.astype(float)}), self.column, "numerical")

    def evaluate(self, current: WindowData) -> SignalResult | None:
        if self.reference is None or current.text_lengths is None:
            return None
        c = self.signal.config
        score, detected, snapshot = value_drift(
            self.column, self._dataset(current.text_lengths), self.reference, c.method, c.threshold
        )
        return SignalResult(self.signal.name, score, c.threshold, detected, c.method, snapshot)


class TextOovSignal(Signal):
    name = "text_oov"
    Config = TextOovConfig

    def bind(self, reference: ReferenceSample) -> BoundSignal:
        column = "oov_share"
        texts = reference.data.texts
        vocabulary = Vocabulary([] if texts is None else [str(t) for t in texts])
        return _BoundTextDescriptor(
            self,
            column,
            texts,
            vocabulary.descriptor(True, column),
            lambda: vocabulary.descriptor(False, column),
        )
