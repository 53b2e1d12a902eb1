"""The real thing: fine-tune the pretrained MiniLM-L6 on the real amazon sentences, continue it on yelp,
and train it with LoRA from the command line with LoRA's own defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.pipeline import TrainOutcome, train_candidate
from adapter.training.data import LabelledData, Split, load_labelled_data, load_test_set
from adapter.training.hyperparameters import Hyperparameters
from tests.conftest import AMAZON, YELP
from tuneloop.registry import Registry
from tuneloop.settings import Settings, load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def amazon_version(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, LabelledData, TrainOutcome]:
    settings = load_settings(registry=str(tmp_path_factory.mktemp("real-minilm") / "registry"))
    data = load_labelled_data(AMAZON)
    yelp = load_test_set(YELP, data.label_names)
    outcome = train_candidate(data, Hyperparameters(epochs=3, max_length=64), settings,
                              extra_test_sets={"yelp": yelp}, show_progress=False)
    return settings, data, outcome


def test_minilm_on_amazon_reaches_085_test_accuracy(amazon_version) -> None:
    settings, _, outcome = amazon_version
    card = outcome.card
    assert card.base_model == "minilm"
    assert card.metrics["test"].accuracy >= 0.85, card.metrics["test"]
    assert card.metrics["yelp"].accuracy >= 0.75  # another domain: lower, far above chance
    assert card.parity["fp32"].passed and card.parity["fp32"].label_agreement == 1.0
    assert card.embedding_dim == 384
    Registry(settings.registry).verify(outcome.version)


def test_continuing_a_version_on_a_new_domain_keeps_its_home_domain(amazon_version) -> None:
    """Continual fine-tuning from v1 on yelp with a replay of v1's own training data: it starts from v1's
    weights and tokenizer, so it must not fall below v1 on v1's own test split."""
    settings, amazon, parent = amazon_version
    yelp = load_labelled_data(YELP, validation_fraction=0.2, test_fraction=0.4)
    replay = Split(amazon.train.texts[:300], amazon.train.labels[:300])
    mixed = LabelledData(
        label_names=amazon.label_names,
        train=Split(yelp.train.texts + replay.texts, yelp.train.labels + replay.labels),
        validation=yelp.validation, test=yelp.test, files=yelp.files,
    )
    child = train_candidate(mixed, Hyperparameters(epochs=2, max_length=64), settings,
                            base_model=parent.version, extra_test_sets={"amazon": amazon.test},
                            show_progress=False)
    card = child.card
    assert card.parent_version == parent.version and card.base_model == "minilm"
    home = parent.card.metrics["test"].accuracy
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
