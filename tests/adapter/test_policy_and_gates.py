"""The adaptation policy's validation, and each gate's verdict on known predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapter.errors import PolicyError
from adapter.loop.gates import Evidence, Graph, Predictions, build_gates, judge
from adapter.loop.policy import AdapterPolicy
from tuneloop.registry import ParityReport
from tuneloop.settings import ServingSettings


def test_an_empty_or_missing_policy_is_the_default(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert AdapterPolicy.load(tmp_path / "empty.yaml") == AdapterPolicy.load(None) == AdapterPolicy()
    assert set(AdapterPolicy().gates) == {"golden", "fresh_gain", "class_recall", "parity", "latency"}


def test_gate_options_merge_over_their_defaults_and_a_gate_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("gates: {fresh_gain: {min_gain: 0.05}, latency: null}\nretraining: {replay_ratio: 0.5}\n")
    policy = AdapterPolicy.load(path)
    assert policy.gates["fresh_gain"] == {"min_gain": 0.05} and "latency" not in policy.gates
    assert [g.name for g in build_gates(policy.gates)] == ["golden", "fresh_gain", "class_recall", "parity"]
    assert build_gates(policy.gates)[1].config.alpha == 0.05  # the untouched knobs keep their defaults


@pytest.mark.parametrize(("text", "message"), [
    ("gates: {nope: {}}", "unknown gate(s) nope"),
    ("gates: {fresh_gain: {min_gain: 2}}", "fresh_gain"),
    ("triggers: {schedule: 'every monday'}", "not a cron expression"),
    ("retraining: {hyperparameters: {strategy: bitfit}}", "unknown strategy 'bitfit'"),
    ("retraining: {fresh_test_share: 1.5}", "retraining.fresh_test_share"),
    ("promotion: {auto_aprove: true}", "promotion.auto_aprove"),
    ("- a list", "must hold a mapping"),
    ("triggers: [", "is not YAML"),
])
def test_a_bad_policy_is_refused_at_start_with_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AdapterPolicy.load(path)
    with pytest.raises(PolicyError, match="policy file not found"):
        AdapterPolicy.load(tmp_path / "missing.yaml")


def predictions(labels, production, candidate) -> Predictions:
    return Predictions(np.asarray(labels), np.asarray(production), np.asarray(candidate))


def parity(passed: bool = True) -> dict[str, ParityReport]:
    return {"fp32": ParityReport(precision="fp32", file="onnx/model.onnx", n=10, max_abs_logit_diff=1e-6,
                                 label_agreement=1.0 if passed else 0.9, accuracy_torch=0.9, accuracy_onnx=0.9,
                                 accuracy_diff=0.0, passed=passed, thresholds={"max_abs_logit_diff": 1e-3})}


def evidence(fresh: Predictions, golden: dict[str, Predictions] | None = None, passed: bool = True) -> Evidence:
    graph = Graph(Path("/nonexistent.onnx"), Path("/nonexistent"), 32)
    return Evidence(production_version="v1", label_names=["0", "1"], fresh=fresh, golden=golden or {},
                    parity=parity(passed), graphs={"production": graph, "candidate": graph},
                    serving=ServingSettings(), sample_texts=[])


def without_latency() -> list:
    return build_gates({name: {} for name in ("golden", "fresh_gain", "class_recall", "parity")})


def rows(n_right_before: int, n_right_after: int, n: int = 100) -> Predictions:
    """n balanced rows; production right on the first n_right_before, the candidate on the first n_right_after."""
    labels = np.array([i % 2 for i in range(n)])
    production = np.where(np.arange(n) < n_right_before, labels, 1 - labels)
    candidate = np.where(np.arange(n) < n_right_after, labels, 1 - labels)
    return predictions(labels, production, candidate)


def test_a_real_gain_that_forgets_nothing_passes_every_gate() -> None:
    report = judge(without_latency(), evidence(rows(70, 90), {"v1/test": rows(90, 89)}))
    assert report.passed, report.reasons()
    fresh = next(r for r in report.results if r.name == "fresh_gain")
    assert fresh.figures["gain"] == 0.2 and fresh.figures["won"] == 20 and fresh.figures["p_value"] < 0.001


def test_forgetting_the_golden_set_fails_the_golden_gate() -> None:
    report = judge(without_latency(), evidence(rows(70, 90), {"v1/test": rows(90, 80)}))
    assert not report.passed
    assert report.reasons() == ["golden: v1/test: accuracy 0.800 against production's 0.900 (may drop 0.02 at most)"]


def test_a_gain_too_small_too_noisy_or_on_too_few_rows_fails_fresh_gain() -> None:
    small = judge(without_latency(), evidence(rows(70, 71)))
    assert any("gain +0.010" in r for r in small.reasons())
    labels = np.array([0, 1] * 25)
    noisy = predictions(labels, np.where(np.arange(50) % 5 == 0, 1 - labels, labels),  # 40 right
                        np.where(np.arange(50) % 7 == 0, 1 - labels, labels))  # 42 right, a different 8 wrong
    assert any("not significant" in r for r in judge(without_latency(), evidence(noisy)).reasons())
    few = judge(without_latency(), evidence(rows(5, 20, n=20)))
    assert any("20 fresh test examples; at least 40" in r for r in few.reasons())


def test_answering_one_class_fails_the_recall_floor_and_failed_parity_fails() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    majority = predictions(labels, np.where(np.arange(100) < 60, labels, 1 - labels), np.zeros(100, int))
    report = judge(without_latency(), evidence(majority, passed=False))
    assert "class_recall: fresh: recall of '1' is 0.000 (at least 0.5)" in report.reasons()
    assert any(r.startswith("parity: fp32") for r in report.reasons())
