"""Continuing to fine-tune a registered version: its weights and its own tokenizer, never a blank vocabulary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapter.errors import TrainingError
from adapter.pipeline import train_candidate
from adapter.training.base_model import BaseModelSource, load_tokenizer, resolve_base_model
from adapter.training.data import load_labelled_data
from adapter.training.hyperparameters import Hyperparameters
from tuneloop.registry import Registry

FAST = dict(epochs=1, batch_size=16, max_length=32, learning_rate=1e-3)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, small_amazon: Path, tiny_bert: Path):
    from tuneloop.settings import load_settings

    settings = load_settings(registry=str(tmp_path_factory.mktemp("continual") / "registry"))
    data = load_labelled_data(small_amazon, validation_fraction=0.2, test_fraction=0.2)
    outcome = train_candidate(data, Hyperparameters(**FAST), settings, base_model=str(tiny_bert),
                              show_progress=False)
    return settings, data, outcome


def test_a_version_id_continues_that_version_and_the_card_names_its_parent(parent, tiny_bert: Path) -> None:
    settings, data, first = parent
    second = train_candidate(data, Hyperparameters(**FAST), settings, base_model=first.version, show_progress=False)
    card = second.card
    assert card.parent_version == first.version
    assert card.base_model == str(tiny_bert)  # the pre-trained encoder at the root of the lineage
    version = Registry(settings.registry).open_version(first.version)
    source = resolve_base_model(first.version, Registry(settings.registry))
    assert source.weights == str(version.pytorch_dir) and source.tokenizer == str(version.tokenizer_dir)


def test_a_weights_folder_without_its_tokenizer_is_refused(parent) -> None:
    settings, data, first = parent
    registry = Registry(settings.registry)
    weights = registry.open_version(first.version).pytorch_dir
    before = registry.list_versions()
    with pytest.raises(TrainingError, match=rf"has no tokenizer.*--base-model {first.version}"):
        train_candidate(data, Hyperparameters(**FAST), settings, base_model=str(weights), show_progress=False)
    assert registry.list_versions() == before  # refused before any training


def test_a_tokenizer_that_cannot_cover_the_model_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    folder = tmp_path / "five-tokens"
    shutil.copytree(tiny_bert, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    source = resolve_base_model(str(folder))
    with pytest.raises(TrainingError, match="knows 5 tokens but the model embeds"):
        load_tokenizer(source, AutoConfig.from_pretrained(folder))


def test_continuing_needs_the_same_labels(parent) -> None:
    settings, data, first = parent
    source = resolve_base_model(first.version, Registry(settings.registry))
    assert isinstance(source, BaseModelSource) and source.parent_labels == data.label_names
    with pytest.raises(TrainingError, match="classifies"):
        source.check_labels(["neg", "neu", "pos"])


def test_an_unknown_version_id_is_named(parent) -> None:
    settings, _, _ = parent
    with pytest.raises(TrainingError, match="has no version v7"):
        resolve_base_model("v7", Registry(settings.registry))
