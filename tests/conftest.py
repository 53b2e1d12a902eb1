"""Fixtures every part of the suite shares: paths to the real data, a tiny random BERT, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real Tansu brokers on loopback ports: kafka_broker (session), own_broker, event_settings, consume_until;
# a real PostgreSQL server: postgres_server (session), postgres_url (a database per test).
pytest_plugins = ["tests.fixtures.broker", "tests.fixtures.browser", "tests.fixtures.postgres"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "sentiment-labelled-sentences"
AMAZON = SHARED_DATA / "amazon_cells_labelled.txt"
YELP = SHARED_DATA / "yelp_labelled.txt"
IMDB = SHARED_DATA / "imdb_labelled.txt"


def read_sentences(path: Path) -> list[tuple[str, str]]:
    """The shared files' ``sentence<TAB>label`` rows."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text, _, label = line.rpartition("\t")
        rows.append((text.strip(), label.strip()))
    return rows


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's real tokenizer: trains in a second."""
    from tests.model_versions import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def small_amazon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 balanced amazon sentences (60 per class) in the shared files' headerless TSV layout."""
    from tests.model_versions import write_small_amazon

    return write_small_amazon(tmp_path_factory.mktemp("data") / "small_amazon.txt")


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def settings(registry_root: Path):
    from tuneloop.settings import load_settings

    return load_settings(registry=str(registry_root))


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory: pytest.TempPathFactory, small_amazon: Path, tiny_bert: Path) -> Path:
    """A registry whose production version is a tiny classifier (model "sentiment", version "v1").

    Session-wide: training and exporting it is the slow part, and nothing here writes to it.
    Test modules that need their own registry define a fixture of the same name, which wins.
    """
    from tests.model_versions import approve_and_promote, train_tiny_version

    root = tmp_path_factory.mktemp("served") / "registry"
    version = train_tiny_version(root, small_amazon, tiny_bert)
    approve_and_promote(root, version)
    return root


# The validation fraction of `tuneloop train`'s default, and of `make demo`: the reference sample the drift
# monitor compares with is (a sample of) the validation split, so these two give it 100 and 250 rows.
DEFAULT_VALIDATION_FRACTION = 0.1
DEMO_VALIDATION_FRACTION = 0.25


@pytest.fixture(scope="session")
def minilm_amazon(tmp_path_factory: pytest.TempPathFactory):
    """MiniLM fine-tuned on the amazon sentences by `tuneloop train` at its default validation fraction."""
    from tests.trained_versions import train_with_cli

    return train_with_cli(tmp_path_factory.mktemp("minilm-amazon") / "registry", DEFAULT_VALIDATION_FRACTION)


@pytest.fixture(scope="session")
def minilm_amazon_demo(tmp_path_factory: pytest.TempPathFactory):
    """The same at the demo's validation fraction."""
    from tests.trained_versions import train_with_cli

    return train_with_cli(tmp_path_factory.mktemp("minilm-amazon-demo") / "registry", DEMO_VALIDATION_FRACTION)
