"""The session's tokenizer: the Rust fast path gives what transformers' own call gives, and says which texts it cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.conftest import AMAZON, IMDB, YELP, read_sentences
from tuneloop.inference import OnnxTextClassifier
from tuneloop.registry import Registry


@pytest.fixture(scope="module")
def opened(served_registry: Path):
    registry = Registry(served_registry)
    return registry.open_version(registry.production())


@pytest.mark.parametrize("limit", [8, 32, 128])
def test_the_fast_path_gives_transformers_ids_and_truncation_flags(opened, limit: int) -> None:
    texts = [t for path in (AMAZON, YELP, IMDB) for t, _ in read_sentences(path)[:150]]
    texts += ["", "é" * 300, "word " * 400]  # empty, one long word, far past any limit
    slow_path = AutoTokenizer.from_pretrained(str(opened.tokenizer_dir))
    clf = OnnxTextClassifier(opened.onnx_path(), opened.tokenizer_dir, max_length=limit,
                             providers=["CPUExecutionProvider"])
    tokens = clf.tokenize(texts)
    assert tokens.ids == slow_path(texts, truncation=True, max_length=limit)["input_ids"]
    full = slow_path(texts, truncation=False)["input_ids"]
    assert tokens.truncated == [len(ids) > limit for ids in full]
    assert any(tokens.truncated) and not all(tokens.truncated)
