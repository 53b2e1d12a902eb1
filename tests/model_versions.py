"""Registered model versions for tests that serve or monitor a model: tiny, real, trained in seconds."""

from __future__ import annotations

from pathlib import Path

from adapter.pipeline import train_candidate
from adapter.training.data import load_labelled_data
from adapter.training.hyperparameters import Hyperparameters
from tuneloop.registry import Registry, State
from tuneloop.settings import load_settings

TINY = dict(epochs=1, batch_size=16, max_length=32, learning_rate=1e-3)


def write_tiny_bert(out: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's real tokenizer, saved in ``out``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from adapter.training.base_model import minilm_folder

    tokenizer = BertTokenizerFast.from_pretrained(minilm_folder())
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out


def write_small_amazon(path: Path) -> Path:
    """120 balanced amazon sentences (60 per class) in the shared files' headerless TSV layout."""
    from tests.conftest import AMAZON, read_sentences

    rows = read_sentences(AMAZON)
    picked = [r for r in rows if r[1] == "0"][:60] + [r for r in rows if r[1] == "1"][:60]
    path.write_text("".join(f"{t}\t{l}\n" for t, l in picked), encoding="utf-8")
    return path


def train_tiny_version(registry_root: Path, data_path: Path, base_model: Path, seed: int = 42) -> str:
    """Train, export and register a tiny classifier; returns its version, awaiting approval as after
    ``tuneloop train``."""
    settings = load_settings(registry=str(registry_root))
    data = load_labelled_data(data_path, validation_fraction=0.2, test_fraction=0.2, seed=seed)
    outcome = train_candidate(data, Hyperparameters(**TINY, seed=seed), settings, base_model=str(base_model),
                              show_progress=False)
    Registry(registry_root).transition(outcome.version, State.AWAITING_APPROVAL, "test", "parity passed")
    return outcome.version


def approve_and_promote(registry_root: Path, version: str) -> None:
    registry = Registry(registry_root)
    registry.transition(version, State.APPROVED, "test", "approved in a test")
    registry.promote(version, "test", "promoted in a test")
