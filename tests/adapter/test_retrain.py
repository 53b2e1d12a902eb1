"""Retraining on the tiny model: fresh examples + replay → a gated candidate; bad candidates rejected by the
gates that should catch them; an interrupted run; one retraining at a time; the automatic rollback."""

from __future__ import annotations

import random
import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapter.loop.policy import AdapterPolicy
from adapter.loop.retrain import Retrainer
from adapter.loop.store import LabelStore
from adapter.loop.watch import PromotionWatch
from tests.adapter.labels import feed, labelled_pair
from tests.conftest import YELP, read_sentences
from tuneloop.registry import Registry, State
from tuneloop.settings import load_settings

TINY = {"epochs": 2, "batch_size": 16, "max_length": 32, "learning_rate": 1e-3}
YELP_ROWS = read_sentences(YELP)


@pytest.fixture
def world(served_registry: Path, tmp_path: Path):
    """A registry whose production version is the tiny v1, a label store, and settings pointing at both."""
    root = tmp_path / "registry"
    shutil.copytree(served_registry, root)
    settings = load_settings(registry=str(root), adapter={"store_url": f"sqlite:///{tmp_path / 'labels.db'}",
                                                          "workdir": str(tmp_path / "work")})
    return settings, Registry(root), LabelStore(settings.adapter.store_url)


def policy(**sections) -> AdapterPolicy:
    # The latency gate is the latency test's: timed on a machine the rest of the suite shares, it is noise.
    base = {"triggers": {"min_fresh_examples": 40}, "retraining": {"hyperparameters": TINY},
            "gates": {"latency": None}}
    for name, value in sections.items():
        base[name] = {**base.get(name, {}), **value}
    return AdapterPolicy.model_validate(base)


def test_a_run_registers_a_gated_candidate_with_its_lineage(world) -> None:
    settings, registry, store = world
    feed(store, YELP_ROWS[:160])
    trigger = store.add_trigger("manual", {"actor": "test"})
    heard = []
    registry.listeners.append(heard.extend)
    outcome = Retrainer(settings, policy(), store, registry).run_if_due()
    assert outcome is not None and outcome.version == "v2"
    card = registry.card("v2")
    assert card.parent_version == "v1" and card.lineage.run_id == outcome.run_id
    assert card.lineage.fresh["sizes"] == {"train": 96, "validation": 24, "test": 40}
    assert card.lineage.replay == {"ratio": 1.0, "rows": 72, "from": "v1"}  # v1 kept its 72 training rows
    assert card.lineage.triggers[0]["kind"] == "manual"
    assert card.lineage.examples_through == store.last_example_id()
    assert set(card.metrics) == {"test", "v1/test"}  # the fresh test set and v1's own
    assert {r.name for r in card.gates.results} == {"golden", "fresh_gain", "class_recall", "parity"}
    # Both versions' full metrics per set, the same figures the gates judged.
    figures = {r.name: r.figures for r in card.gates.results}
    assert set(card.gates.comparison) == {"fresh", "v1/test"}
    fresh = card.gates.comparison["fresh"]
    assert fresh.candidate.n == 40 and sum(map(sum, fresh.production.confusion_matrix)) == 40
    assert round(fresh.candidate.accuracy, 4) == figures["fresh_gain"]["candidate"]
    assert round(card.gates.comparison["v1/test"].production.accuracy, 4) == figures["golden"]["v1/test"]["production"]
    expected = State.AWAITING_APPROVAL if card.gates.passed else State.REJECTED
    assert outcome.state == expected == registry.state("v2")
    assert [(e.to_state, e.actor) for e in heard] == [("candidate", "tuneloop-adapter"),
                                                       (expected.value, "tuneloop-adapter")]
    run = store.runs()[-1]
    assert run.state == expected.value and run.candidate == "v2" and store.waiting_triggers() == []
    assert trigger not in [t.id for t in store.waiting_triggers()]
    # Nothing fresh since: the next look does not retrain on the same examples.
    store.add_trigger("manual", {"actor": "test"})
    assert Retrainer(settings, policy(), store, registry).run_if_due() is None and len(store.runs()) == 1


def test_too_few_fresh_examples_keep_a_trigger_waiting(world) -> None:
    settings, registry, store = world
    feed(store, YELP_ROWS[:20])
    store.add_trigger("drift_alert", {"model_version": "v1"})
    assert Retrainer(settings, policy(), store, registry).run_if_due() is None
    assert [t.kind for t in store.waiting_triggers()] == ["drift_alert"] and store.runs() == []


def test_a_candidate_trained_on_shuffled_labels_is_rejected(world) -> None:
    settings, registry, store = world
    rows = YELP_ROWS[:200]
    labels = [label for _, label in rows]
    random.Random(3).shuffle(labels)
    feed(store, [(text, label) for (text, _), label in zip(rows, labels)])
    store.add_trigger("manual", {"actor": "test"})
    outcome = Retrainer(settings, policy(), store, registry).run_if_due()
    assert outcome.state == State.REJECTED and registry.state(outcome.version) == State.REJECTED
    assert any(r.startswith(("fresh_gain:", "golden:", "class_recall:")) for r in outcome.report.reasons())
    assert "gates failed" in registry.audit_log(outcome.version)[-1].reason


def test_a_candidate_too_slow_is_rejected_by_the_latency_gate(world, tmp_path: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    settings, registry, store = world
    big = tmp_path / "big-bert"
    shutil.copytree(registry.open_version("v1").tokenizer_dir, big)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=256)).save_pretrained(big)
    feed(store, YELP_ROWS[:120])
    store.add_trigger("manual", {"actor": "test"})
    only_latency = {name: None for name in AdapterPolicy.DEFAULT_GATES} | {"latency": {"max_ratio": 1.5, "runs": 40}}
    slow = policy(retraining={"start_from": "base", "base_model": str(big),
                              "hyperparameters": {**TINY, "epochs": 1}}, gates=only_latency)
    outcome = Retrainer(settings, slow, store, registry).run_if_due()
    assert outcome.state == State.REJECTED
    (reason,) = outcome.report.reasons()
    assert reason.startswith("latency: p95") and outcome.report.results[0].figures["ratio"] > 1.5


def test_an_interrupted_run_is_reported_its_triggers_wait_again_and_its_candidate_is_rejected(world) -> None:
    settings, registry, store = world
    feed(store, YELP_ROWS[:120])
    trigger = store.add_trigger("manual", {"actor": "test"})
    dead = store.start_run("a-dead-adapter", [trigger], {})  # its process died mid-way: no finish
    retrainer = Retrainer(settings, policy(), store, registry)
    with store.retrain_lock():
        retrainer.recover_interrupted()
    assert store.runs("interrupted")[0].id == dead
    assert [t.id for t in store.waiting_triggers()] == [trigger]


def test_two_adapters_on_one_postgresql_store_retrain_once(world, postgres_url: str) -> None:
    settings, registry, _ = world
    store = LabelStore(postgres_url)
    feed(store, YELP_ROWS[:120])
    store.add_trigger("drift_alert", {"model_version": "v1"})
    outcomes: list = []
    replicas = [Retrainer(settings, policy(), LabelStore(postgres_url), registry,
                          owner=f"replica-{i}") for i in range(2)]
    threads = [threading.Thread(target=lambda r=r: outcomes.append(r.run_if_due())) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o is None for o in outcomes) == [False, True]
    assert len(store.runs()) == 1 and len([v for v in registry.list_versions() if v.version != "v1"]) == 1


def test_a_promotion_whose_live_accuracy_falls_is_rolled_back(world) -> None:
    from prometheus_client import REGISTRY

    settings, registry, store = world
    feed(store, YELP_ROWS[:120])
    store.add_trigger("manual", {"actor": "test"})
    only_parity = {"fresh_gain": None, "golden": None, "class_recall": None}  # the tiny model gains nothing
    outcome = Retrainer(settings, policy(gates=only_parity), store, registry).run_if_due()
    registry.transition(outcome.version, State.APPROVED, "alice", "try it")
    registry.promote(outcome.version, "alice", "try it")
    watch = PromotionWatch(registry, store, policy(rollback={"min_feedback": 20}).rollback)
    assert watch.step() is None  # no feedback on the new version yet
    now = datetime.now(timezone.utc)
    events = []
    for i, (text, label) in enumerate(YELP_ROWS[200:230]):  # the new version answers every one wrongly
        events += labelled_pair(text, label, version=outcome.version, predicted="0" if label == "1" else "1",
                                at=now + timedelta(milliseconds=i))
    store.ingest(events)
    before = REGISTRY.get_sample_value("tuneloop_adapter_rollbacks_total") or 0
    assert watch.step() == outcome.version
    assert registry.production() == "v1" and registry.state(outcome.version) == State.ROLLED_BACK
    last = registry.audit_log(outcome.version)[-1]
    assert last.actor == "tuneloop-adapter" and "live accuracy 0.000 on 30 labelled predictions" in last.reason
    assert REGISTRY.get_sample_value("tuneloop_adapter_rollbacks_total") == before + 1


def test_golden_sets_leave_out_what_the_candidate_learns_from_whatever_its_whitespace(world) -> None:
    _, registry, _ = world
    production = registry.open_version("v1")
    home = production.dataset("test")
    learnt = {"  " + home[0][0].replace(" ", "   ") + " \t", home[1][0]}  # as traffic: spaced differently
    golden = Retrainer.golden_sets(production, learnt)
    assert len(golden["v1/test"]) == len(home) - 2
    assert home[0][0] not in golden["v1/test"].texts and home[2][0] in golden["v1/test"].texts
