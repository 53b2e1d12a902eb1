"""The real thing: the pretrained MiniLM-L6 fine-tuned on the real amazon sentences by `tuneloop train` (the
session's ``minilm_amazon``), continued on yelp, and trained with LoRA's own defaults from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.pipeline import train_candidate
from adapter.training.data import LabelledData, Split, load_labelled_data
from adapter.training.hyperparameters import Hyperparameters
from tests.conftest import AMAZON, YELP
from tests.trained_versions import TrainedVersion
from tuneloop.registry import Registry
from tuneloop.settings import load_settings

pytestmark = pytest.mark.slow


def test_minilm_on_amazon_reaches_085_test_accuracy(minilm_amazon: TrainedVersion) -> None:
    registry = Registry(minilm_amazon.registry)
    card = registry.card(minilm_amazon.version)
    assert card.base_model == "minilm" and card.metrics["test"].n == len(minilm_amazon.data.test)
    assert card.metrics["test"].accuracy >= 0.85, card.metrics["test"]
    assert card.metrics["yelp"].accuracy >= 0.75  # another domain: lower, far above chance
    assert card.parity["fp32"].passed and card.parity["fp32"].label_agreement == 1.0
    assert card.embedding_dim == 384
    registry.verify(minilm_amazon.version)


def test_continuing_a_version_on_a_new_domain_keeps_its_home_domain(minilm_amazon: TrainedVersion,
                                                                   tmp_path: Path) -> None:
    """Continual fine-tuning from v1 on yelp with a replay of v1's own training data: it starts from v1's
    weights and tokenizer, so it must not fall below v1 on v1's own test split."""
    root = minilm_amazon.registry_copy(tmp_path / "registry", promote=False)
    settings = load_settings(registry=str(root))
    amazon, parent = minilm_amazon.data, Registry(root).card(minilm_amazon.version)
    yelp = load_labelled_data(YELP, validation_fraction=0.2, test_fraction=0.4)
    replay = Split(amazon.train.texts[:300], amazon.train.labels[:300])
    mixed = LabelledData(
        label_names=amazon.label_names,
        train=Split(yelp.train.texts + replay.texts, yelp.train.labels + replay.labels),
        validation=yelp.validation, test=yelp.test, files=yelp.files,
    )
    child = train_candidate(mixed, Hyperparameters(epochs=2, max_length=64), settings,
                            base_model=minilm_amazon.version, extra_test_sets={"amazon": amazon.test},
                            show_progress=False)
    card = child.card
    assert card.parent_version == minilm_amazon.version and card.base_model == "minilm"
    home = parent.metrics["test"].accuracy
    print(f"amazon test: parent {home:.3f}, child {card.metrics['amazon'].accuracy:.3f}; "
          f"yelp test: child {card.metrics['test'].accuracy:.3f}")
    # One sentence of the 100 in amazon's test split is 0.01: the child may lose at most that one.
    assert card.metrics["amazon"].accuracy >= home - 0.01, (home, card.metrics["amazon"])
    assert card.metrics["test"].accuracy >= 0.85, card.metrics["test"]


def test_lora_with_its_own_defaults_learns(tmp_path: Path) -> None:
    """`tuneloop train --strategy lora` as a new user runs it: no learning rate given."""
    registry = tmp_path / "registry"
    done = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", "train", "--data", str(AMAZON), "--strategy", "lora",
         "--max-length", "64", "--registry", str(registry), "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(subprocess.run([sys.executable, "-m", "tuneloop.cli", "models", "list", "--json",
                                        "--registry", str(registry)], capture_output=True, text=True).stdout)
    card = Registry(registry).card(listed[0]["version"])
    print(f"LoRA defaults: learning rate {card.hyperparameters['learning_rate']}, "
          f"test accuracy {card.metrics['test'].accuracy:.3f}")
    assert card.hyperparameters["learning_rate"] == 1e-3
    assert card.metrics["test"].accuracy >= 0.80, card.metrics["test"]
