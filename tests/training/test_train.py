"""Fine-tuning, strategies, search, export and parity on a tiny random BERT (seconds each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from pydantic import ValidationError

from adapter.errors import ParityError, TrainingError
from adapter.pipeline import train_candidate
from adapter.training.base_model import resolve_base_model
from adapter.training.classifier import load_classifier
from adapter.training.data import load_labelled_data
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.search import SearchConfig, SearchSpace, run_search
from adapter.training.strategies import FreezeConfig, FullConfig, LoraConfig
from adapter.training.trainer import fine_tune
from tuneloop.inference import OnnxTextClassifier
from tuneloop.registry import Registry, State

FAST = dict(epochs=2, batch_size=16, max_length=32, learning_rate=1e-3)


@pytest.fixture(scope="module")
def data(small_amazon: Path):
    return load_labelled_data(small_amazon, validation_fraction=0.2, test_fraction=0.2)


def test_train_registers_a_verified_candidate_with_card_and_reference(data, tiny_bert: Path, settings) -> None:
    settings.export = settings.export.model_copy(update={"int8": True, "fp16": True})
    outcome = train_candidate(data, Hyperparameters(**FAST), settings, base_model=str(tiny_bert),
                              show_progress=False)
    reg = Registry(settings.registry)
    # What comes next is the caller's decision: tuneloop train asks for approval, the adapter runs gates.
    assert outcome.version == "v1" and outcome.state == State.CANDIDATE and reg.state("v1") == State.CANDIDATE
    version = reg.open_version("v1")
    card = version.card
    assert set(card.onnx_files) == {"fp32", "int8", "fp16"}
    # The served graph is fused by onnxruntime's transformer optimiser: attention and layer norms as single ops.
    ops = {node.op_type for node in onnx.load(str(version.onnx_path("fp32"))).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops, sorted(ops)
    assert card.parity["fp32"].passed and card.parity["fp32"].max_abs_logit_diff < 1e-3
    # Each reduced-precision graph passed its own, looser gate, measured on the test split.
    for precision in ("int8", "fp16"):
        report, gate = card.parity[precision], getattr(settings.export, f"parity_{precision}")
        assert report.passed and report.n == len(data.test)
        assert report.max_abs_logit_diff <= gate.max_abs_logit_diff
        assert report.label_agreement >= gate.min_label_agreement
        assert report.thresholds == gate.model_dump()
    assert card.metrics["test"].n == len(data.test)
    assert card.splits == data.sizes and card.data[0].sha256 == data.files[0].sha256
    assert card.timings.train_seconds > 0 and card.timings.train_samples_per_second > 0
    ref = version.reference()
    assert ref["embeddings"].shape == (len(data.validation), 32)
    assert ref["probabilities"].shape == (len(data.validation), 2)
    np.testing.assert_allclose(ref["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    # The served graph reproduces the reference embeddings: the monitor compares like with like.
    served = OnnxTextClassifier(version.onnx_path(), version.tokenizer_dir, max_length=card.max_length)
    _, emb = served.predict(list(ref["texts"]))
    np.testing.assert_allclose(emb, ref["embeddings"], atol=1e-4)
    assert [a.to_state for a in reg.audit_log("v1")] == ["candidate"]
    # It keeps what it was trained and tested on: its successors replay the one and are held to the other.
    assert set(card.datasets) == {"train", "test"}
    assert version.dataset("test") == [(t, data.label_names[y]) for t, y in zip(data.test.texts, data.test.labels)]
    assert len(version.dataset("train")) == len(data.train)


def test_parity_failure_refuses_the_export(data, tiny_bert: Path, settings) -> None:
    impossible = settings.export.parity_fp32.model_copy(update={"max_abs_logit_diff": 1e-15})
    settings.export = settings.export.model_copy(update={"parity_fp32": impossible})
    with pytest.raises(ParityError, match="export refused"):
        train_candidate(data, Hyperparameters(**FAST), settings, base_model=str(tiny_bert), show_progress=False)
    assert Registry(settings.registry).list_versions() == []


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_reduced_precision_graph_that_fails_its_gate_refuses_the_export(data, tiny_bert: Path, settings,
                                                                         precision: str) -> None:
    gate = getattr(settings.export, f"parity_{precision}").model_copy(update={"max_abs_logit_diff": 1e-12})
    settings.export = settings.export.model_copy(update={precision: True, f"parity_{precision}": gate})
    with pytest.raises(ParityError, match=f"{precision}: max"):
        train_candidate(data, Hyperparameters(**FAST), settings, base_model=str(tiny_bert), show_progress=False)
    assert Registry(settings.registry).list_versions() == []


def test_freeze_strategy_freezes_embeddings_and_lower_layers(tiny_bert: Path) -> None:
    model = FreezeConfig(frozen_layers=1).build().prepare(load_classifier(str(tiny_bert), ["0", "1"], 0.1))
    bert = model.base_model
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(TrainingError, match="has 2"):
        FreezeConfig(frozen_layers=5).build().prepare(load_classifier(str(tiny_bert), ["0", "1"], 0.1))


def test_lora_trains_only_adapters_and_head_then_merges(data, tiny_bert: Path) -> None:
    hp = Hyperparameters(strategy=LoraConfig(r=4), **FAST)
    tuned = fine_tune(data, hp, resolve_base_model(str(tiny_bert)), show_progress=False)
    assert tuned.trainable_share < 0.2
    names = [n for n, _ in tuned.model.named_modules()]
    assert not any("lora" in n for n in names)  # merged: export sees a plain BertForSequenceClassification
    assert type(tuned.model).__name__ == "BertForSequenceClassification"
    # The adapters learnt something, merged into the attention weights they sat on; the rest stayed put.
    pretrained = load_classifier(str(tiny_bert), data.label_names, 0.1).state_dict()
    merged = tuned.model.state_dict()
    changed = {k for k in pretrained if "encoder" in k and not torch.equal(pretrained[k], merged[k])}
    assert changed and all(k.endswith((".query.weight", ".value.weight")) for k in changed), sorted(changed)


def test_lora_merged_model_computes_what_the_adapted_one_did(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    strategy = LoraConfig(r=4).build()
    adapted = strategy.prepare(load_classifier(str(tiny_bert), ["0", "1"], 0.0)).eval()
    with torch.no_grad():  # trained adapters: lora_B starts at zero, which would make the check vacuous
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = AutoTokenizer.from_pretrained(tiny_bert)(["a short one", "and a somewhat longer sentence here"],
                                                     padding=True, return_tensors="pt")
    with torch.no_grad():
        before = adapted(**batch).logits
        merged = strategy.finalize(adapted).eval()
        after = merged(**batch).logits
    assert not any("lora" in n for n, _ in merged.named_modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_lora_candidate_exports_with_parity(data, tiny_bert: Path, settings) -> None:
    outcome = train_candidate(data, Hyperparameters(strategy="lora", **FAST), settings, base_model=str(tiny_bert),
                              show_progress=False)
    parity = outcome.card.parity["fp32"]
    assert outcome.card.strategy == "lora" and parity.passed and parity.label_agreement == 1.0


def test_unknown_strategy() -> None:
    with pytest.raises(ValidationError, match="unknown strategy 'bitfit'"):
        Hyperparameters(strategy="bitfit")


def test_each_strategy_brings_its_own_defaults() -> None:
    assert Hyperparameters().strategy == FullConfig() and Hyperparameters().learning_rate == 5e-5
    lora = Hyperparameters(strategy="lora")
    assert lora.strategy == LoraConfig() and lora.learning_rate == LoraConfig.default_learning_rate == 1e-3
    assert Hyperparameters(strategy="lora", learning_rate=2e-4).learning_rate == 2e-4  # given wins
    from_policy = Hyperparameters.model_validate({"strategy": {"name": "freeze", "frozen_layers": 2}, "epochs": 5})
    assert from_policy.strategy == FreezeConfig(frozen_layers=2) and from_policy.epochs == 5
    with pytest.raises(ValidationError, match="r"):
        Hyperparameters.model_validate({"strategy": {"name": "full", "r": 4}})  # LoRA's knob on full
    tuned = lora.updated({"strategy.r": 16, "weight_decay": 0.0})
    assert tuned.strategy.r == 16 and tuned.weight_decay == 0.0 and tuned.learning_rate == 1e-3


@pytest.mark.parametrize("method", ["grid", "random", "bayes"])
def test_search_keeps_best_trial_and_its_table(data, tiny_bert: Path, method: str) -> None:
    base = Hyperparameters(**FAST | {"epochs": 1})
    search = SearchConfig(method=method, trials=2, space=SearchSpace.default(base))
    result = run_search(data, base, resolve_base_model(str(tiny_bert)), search, show_progress=False)
    assert result.trials == 2 and len(result.table) == 2
    assert result.best_value == pytest.approx(result.table["value"].max())
    assert result.best.best_validation_f1 == pytest.approx(result.best_value)
    for name, value in result.best_params.items():
        assert getattr(result.best.hyperparameters, name) == value


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


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
    assert shown["card"]["parity"]["fp32"]["passed"] and shown["card"]["timings"]["train_seconds"] > 0
    assert "ONNX parity" in done.stdout or "parity fp32" in run_cli("models", "show", "v1", "--registry", reg).stdout
    assert (tmp_path / "reg" / "versions" / "v1" / "search" / "trials.csv").is_file()
    assert run_cli("models", "promote", "v1", "--registry", reg).returncode == 2  # not approved yet
    assert run_cli("models", "approve", "v1", "--registry", reg, "--actor", "alice").returncode == 0
    assert run_cli("models", "promote", "v1", "--registry", reg).returncode == 0
    assert json.loads(run_cli("models", "list", "--json", "--registry", reg).stdout)[0]["state"] == "production"
    assert "v1 ★" in run_cli("models", "list", "--registry", reg).stdout  # the table marks production


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent.txt"], "data file not found"),
        (["--data", "{small}", "--strategy", "bitfit"], "unknown strategy"),
        (["--data", "{small}", "--learning-rate", "-1"], "invalid hyperparameters"),
        (["--data", "{small}", "--search", "annealing"], "unknown search method"),
        (["--data", "{small}", "--extra-test", "yelp"], "NAME=PATH"),
        (["--data", "{small}", "--lora-r", "4"], "--lora-r is not an option of --strategy full"),
        (["--data", "{small}", "--trials", "4"], "--trials and --search-space need --search"),
        (["--data", "{small}", "--format", "parquet"], "unknown data format 'parquet'"),
        (["--data", "{small}", "--format", "csv"], "cannot be parsed as CSV"),
        (["--data", "{one_class}"], "has a single class"),
        (["--data", "{empty_text}"], "1 empty text(s)"),
        (["--data", "{small}", "--test-file", "{odd_label}"], "unknown label(s) ['2']"),
        (["--data", "{small}", "--base-model", "{tiny}/no-such-folder"], "no-such-folder does not exist"),
    ],
)
def test_cli_bad_input_is_one_clear_line(small_amazon: Path, tiny_bert: Path, tmp_path: Path,
                                         args: list[str], message: str) -> None:
    """Each ends with one red line and exit code 2, never a traceback (in process: the CLI's own handling)."""
    from typer.testing import CliRunner

    from tuneloop.cli import _mount_deployable_commands, app

    rows = (tmp_path / "rows.txt")
    rows.write_text(small_amazon.read_text())
    files = {"small": small_amazon, "tiny": tiny_bert, "one_class": tmp_path / "one.txt",
             "empty_text": tmp_path / "empty.txt", "odd_label": tmp_path / "odd.txt"}
    lines = small_amazon.read_text().splitlines()
    files["one_class"].write_text("".join(line.rsplit("\t", 1)[0] + "\t1\n" for line in lines[:40]))
    files["empty_text"].write_text("\n".join(lines[:40]) + "\n   \t1\n")
    files["odd_label"].write_text("\n".join(lines[:10]) + "\nodd one\t2\n")
    args = [a.format(**files) for a in args]
    _mount_deployable_commands()
    base = [] if "--base-model" in args else ["--base-model", str(tiny_bert)]
    done = CliRunner().invoke(app, ["train", *args, *base, "--registry", str(tmp_path / "r"), "--epochs", "1",
                                    "--no-progress"])
    assert done.exit_code == 2, done.output
    assert message in done.stderr and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        next(line for line in done.stderr.splitlines() if message in line)], done.stderr


def test_cli_options_left_out_keep_the_strategy_defaults(small_amazon: Path, tiny_bert: Path, tmp_path: Path) -> None:
    reg = str(tmp_path / "reg")
    done = run_cli("train", "--data", str(small_amazon), "--base-model", str(tiny_bert), "--registry", reg,
                   "--strategy", "lora", "--lora-r", "4", "--epochs", "1", "--max-length", "32", "--no-progress")
    assert done.returncode == 0, done.stderr
    card = Registry(reg).card("v1")
    assert card.strategy == "lora"
    # No --learning-rate: LoRA's own default, not full fine-tuning's; no --lora-alpha: LoRA's default.
    assert card.hyperparameters["learning_rate"] == LoraConfig.default_learning_rate
    assert card.hyperparameters["strategy"] == LoraConfig(r=4).model_dump(mode="json")


def test_early_stopping_ends_a_run_that_stopped_improving(data, tiny_bert: Path) -> None:
    # A learning rate too small to change anything: validation macro-F1 is the same every epoch.
    hp = Hyperparameters(**FAST | {"epochs": 10, "learning_rate": 1e-12, "patience": 1})
    tuned = fine_tune(data, hp, resolve_base_model(str(tiny_bert)), show_progress=False)
    assert tuned.epochs_run == 2  # the first epoch sets the best; the second does not beat it


def test_the_best_epochs_weights_are_kept_not_the_last(data) -> None:
    """The last epoch is spoilt on purpose (its head made to answer one class whatever the text): what
    fine_tune hands back must be the best epoch's model, not the last one."""
    from sklearn.metrics import f1_score
    from transformers import TrainerCallback

    from adapter.training.classifier import predict_torch

    class SpoilTheLastEpoch(TrainerCallback):
        f1: list[float] = []

        def on_epoch_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if round(state.epoch) == args.num_train_epochs:  # before that epoch's evaluation
                with torch.no_grad():
                    model.classifier.weight.zero_()
                    model.classifier.bias.copy_(torch.tensor([10.0, 0.0]))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            self.f1.append(metrics["eval_f1_macro"])

    spoil = SpoilTheLastEpoch()
    hp = Hyperparameters(epochs=2, batch_size=16, max_length=32, learning_rate=3e-4, patience=5)
    tuned = fine_tune(data, hp, resolve_base_model("minilm"), show_progress=False, callbacks=[spoil])
    assert len(spoil.f1) == 2 and spoil.f1[1] <= 0.34 < spoil.f1[0]  # a constant answer, after a real epoch
    logits, _ = predict_torch(tuned.model, tuned.tokenizer, data.validation.texts, hp.max_length)
    kept = f1_score(data.validation.labels, logits.argmax(axis=1), average="macro")
    assert kept == pytest.approx(spoil.f1[0], abs=1e-6) == tuned.best_validation_f1


def test_balanced_class_weights_weigh_the_loss_by_inverse_frequency(data, tiny_bert: Path) -> None:
    from adapter.training.trainer import _WeightedLossTrainer

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0], [1.5, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])  # the minority class, 1, is a quarter of the rows
    weights = torch.tensor([4 / 6, 4 / 2])  # sklearn's "balanced": n / (classes × count)

    class Fixed(torch.nn.Module):
        def forward(self, **_: object):
            return type("Out", (), {"logits": logits})()

    trainer = _WeightedLossTrainer.__new__(_WeightedLossTrainer)
    trainer.class_weights = weights
    loss = trainer.compute_loss(Fixed(), {"labels": labels})
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(logits, labels, weight=weights))
    assert not torch.isclose(loss, torch.nn.functional.cross_entropy(logits, labels))


def test_cli_search_space_file_and_training_knobs_reach_the_card(small_amazon: Path, tiny_bert: Path,
                                                                 tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("weight_decay: {low: 0.0, high: 0.2, grid: [0.0, 0.2]}\n"
                     "strategy.r: {choices: [2, 4]}\n")
    reg = str(tmp_path / "reg")
    done = run_cli("train", "--data", str(small_amazon), "--base-model", str(tiny_bert), "--registry", reg,
                   "--strategy", "lora", "--search", "grid", "--trials", "9", "--search-space", str(space),
                   "--epochs", "1", "--max-length", "32", "--patience", "1", "--class-weights", "balanced",
                   "--no-progress")
    assert done.returncode == 0, done.stderr
    card = Registry(reg).card("v1")
    trials = pd.read_csv(tmp_path / "reg" / "versions" / "v1" / "search" / "trials.csv")
    assert len(trials) == 4  # the whole 2 × 2 grid, not the budget of 9
    assert {"params_weight_decay", "params_strategy.r"} <= set(trials.columns)
    assert set(trials["params_strategy.r"]) == {2, 4}
    best = card.search["best_params"]
    assert card.hyperparameters["strategy"]["r"] == best["strategy.r"]
    assert card.hyperparameters["weight_decay"] == best["weight_decay"]
    assert card.hyperparameters["patience"] == 1 and card.hyperparameters["class_weights"] == "balanced"


def test_a_hub_id_resolves_through_the_hugging_face_cache(small_amazon: Path, tiny_bert: Path,
                                                         tmp_path: Path) -> None:
    """`--base-model org/name` is a hub id: with no network (HF_HUB_OFFLINE) it is found in the local hub cache,
    laid out here as a download would leave it, and the card names it."""
    import shutil

    commit = "0" * 40
    cached = tmp_path / "hub" / "models--tuneloop-test--tiny-bert"
    shutil.copytree(tiny_bert, cached / "snapshots" / commit)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text(commit)
    reg = str(tmp_path / "reg")
    done = run_cli("train", "--data", str(small_amazon), "--base-model", "tuneloop-test/tiny-bert",
                   "--registry", reg, "--epochs", "1", "--max-length", "32", "--no-progress",
                   env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert Registry(reg).card("v1").base_model == "tuneloop-test/tiny-bert"
    missing = run_cli("train", "--data", str(small_amazon), "--base-model", "tuneloop-test/not-there",
                      "--registry", reg, "--epochs", "1", "--no-progress",
                      env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "tuneloop-test/not-there" in missing.stderr


def test_search_methods_and_the_default_space() -> None:
    import optuna

    from adapter.training.search import SearchMethod, _sampler

    lora, full = Hyperparameters(strategy="lora"), Hyperparameters()
    for base in (lora, full):  # the learning rate is searched around the strategy's own default
        space = SearchSpace.default(base).params["learning_rate"]
        assert space.low < base.learning_rate < space.high and space.log
    assert isinstance(_sampler(SearchMethod.BAYES, SearchSpace.default(full), 0, 4), optuna.samplers.TPESampler)
    assert isinstance(_sampler(SearchMethod.RANDOM, SearchSpace.default(full), 0, 4), optuna.samplers.RandomSampler)
    assert isinstance(_sampler(SearchMethod.GRID, SearchSpace.default(full), 0, 4), optuna.samplers.GridSampler)
