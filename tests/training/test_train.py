"""Fine-tuning, strategies, search, export and parity on a tiny random BERT (seconds each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapter.errors import ParityError, TrainingError
from adapter.pipeline import train_and_register
from adapter.training.data import load_labelled_data
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.search import SearchSpace, run_search
from adapter.training.strategies import build_strategy
from adapter.training.trainer import fine_tune, load_classifier
from tuneloop.inference import OnnxTextClassifier
from tuneloop.registry import Registry, State

FAST = dict(epochs=2, batch_size=16, max_length=32, learning_rate=1e-3)


@pytest.fixture(scope="module")
def data(small_amazon: Path):
    return load_labelled_data(small_amazon, validation_fraction=0.2, test_fraction=0.2)


def test_train_registers_a_verified_version_with_card_and_reference(data, tiny_bert: Path, settings) -> None:
    settings.export = settings.export.model_copy(update={"int8": True})
    outcome = train_and_register(data, Hyperparameters(**FAST), settings, base_model=str(tiny_bert),
                                 show_progress=False)
    reg = Registry(settings.registry)
    assert outcome.version == "v1" and reg.state("v1") == State.AWAITING_APPROVAL
    version = reg.open_version("v1")
    card = version.card
    assert set(card.onnx_files) == {"fp32", "int8"}
    assert card.parity["fp32"].passed and card.parity["fp32"].max_abs_logit_diff < 1e-3
    assert card.metrics["test"].n == len(data.test)
    assert card.splits == data.sizes and card.data[0].sha256 == data.files[0].sha256
    assert card.timings.train_seconds > 0 and card.timings.train_samples_per_second > 0
    ref = version.reference()
    assert ref["embeddings"].shape == (len(data.validation), 32)
    assert ref["probabilities"].shape == (len(data.validation), 2)
    np.testing.assert_allclose(ref["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    # The served graph reproduces the reference embeddings: the monitor compares like with like.
    onnx = OnnxTextClassifier(version.onnx_path(), version.tokenizer_dir, max_length=card.max_length)
    _, emb = onnx.predict(list(ref["texts"]))
    np.testing.assert_allclose(emb, ref["embeddings"], atol=1e-4)
    assert [a.to_state for a in reg.audit_log("v1")] == ["candidate", "awaiting_approval"]


def test_parity_failure_refuses_the_export(data, tiny_bert: Path, settings) -> None:
    impossible = settings.export.parity_fp32.model_copy(update={"max_abs_logit_diff": 1e-15})
    settings.export = settings.export.model_copy(update={"parity_fp32": impossible})
    with pytest.raises(ParityError, match="export refused"):
        train_and_register(data, Hyperparameters(**FAST), settings, base_model=str(tiny_bert), show_progress=False)
    assert Registry(settings.registry).list_versions() == []


def test_freeze_strategy_freezes_embeddings_and_lower_layers(tiny_bert: Path) -> None:
    hp = Hyperparameters(strategy="freeze", frozen_layers=1)
    model = build_strategy(hp).prepare(load_classifier(str(tiny_bert), ["0", "1"], 0.1))
    bert = model.base_model
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(TrainingError, match="has 2"):
        build_strategy(Hyperparameters(strategy="freeze", frozen_layers=5)).prepare(
            load_classifier(str(tiny_bert), ["0", "1"], 0.1))


def test_lora_trains_only_adapters_and_head_then_merges(data, tiny_bert: Path) -> None:
    tuned = fine_tune(data, Hyperparameters(strategy="lora", lora_r=4, **FAST), str(tiny_bert), show_progress=False)
    assert tuned.trainable_share < 0.2
    names = [n for n, _ in tuned.model.named_modules()]
    assert not any("lora" in n for n in names)  # merged: export sees a plain BertForSequenceClassification
    assert type(tuned.model).__name__ == "BertForSequenceClassification"


def test_unknown_strategy() -> None:
    with pytest.raises(TrainingError, match="unknown strategy 'bitfit'"):
        build_strategy(Hyperparameters(strategy="bitfit"))


@pytest.mark.parametrize("method", ["grid", "random", "bayes"])
def test_search_keeps_best_trial_and_its_table(data, tiny_bert: Path, method: str) -> None:
    space = SearchSpace.default()
    result = run_search(data, Hyperparameters(**FAST | {"epochs": 1}), str(tiny_bert), method, trials=2,
                        space=space, show_progress=False)
    assert result.trials == 2 and len(result.table) == 2
    assert result.best_value == pytest.approx(result.table["value"].max())
    assert result.best.best_validation_f1 == pytest.approx(result.best_value)
    for name, value in result.best_params.items():
        assert getattr(result.best.hyperparameters, name) == value


def run_cli(*args: str, env_registry: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_train_then_list_show_promote(small_amazon: Path, tiny_bert: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "reg")
    done = run_cli("train", "--data", str(small_amazon), "--base-model", str(tiny_bert), "--registry", reg,
                   "--epochs", "1", "--max-length", "32", "--search", "random", "--trials", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "held-out test metrics" in done.stdout and "passed" in done.stdout
    listed = json.loads(run_cli("models", "list", "--json", "--registry", reg).stdout)
    assert listed[0]["version"] == "v1" and listed[0]["state"] == "awaiting_approval"
    shown = json.loads(run_cli("models", "show", "v1", "--json", "--registry", reg).stdout)
    assert shown["card"]["search"]["trials"] == 2
    assert (tmp_path / "reg" / "versions" / "v1" / "search" / "trials.csv").is_file()
    assert run_cli("models", "promote", "v1", "--registry", reg).returncode == 2  # not approved yet
    assert run_cli("models", "approve", "v1", "--registry", reg, "--actor", "alice").returncode == 0
    assert run_cli("models", "promote", "v1", "--registry", reg).returncode == 0
    assert json.loads(run_cli("models", "list", "--json", "--registry", reg).stdout)[0]["state"] == "production"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent.txt"], "data file not found"),
        (["--data", "{small}", "--strategy", "bitfit"], "unknown strategy"),
        (["--data", "{small}", "--learning-rate", "-1"], "invalid hyperparameters"),
        (["--data", "{small}", "--search", "annealing"], "unknown search method"),
        (["--data", "{small}", "--extra-test", "yelp"], "NAME=PATH"),
    ],
)
def test_cli_bad_input_is_one_clear_line(small_amazon: Path, tiny_bert: Path, tmp_path: Path,
                                         args: list[str], message: str) -> None:
    args = [a.replace("{small}", str(small_amazon)) for a in args]
    done = run_cli("train", *args, "--base-model", str(tiny_bert), "--registry", str(tmp_path / "r"),
                   "--epochs", "1", "--no-progress")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
