"""A real adapter for the admin tests: `tuneloop adapt` with its admin port, over a registry whose candidates
were retrained by the adapter's own Retrainer (tiny model), a label store with feedback, a drift monitor with
reports, and a tokens file with an operator and a viewer."""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from adapter.admin.tokens import Role, add_token
from adapter.loop.policy import AdapterPolicy
from adapter.loop.retrain import Retrainer
from adapter.loop.store import LabelStore
from tests.adapter.labels import feed
from tests.conftest import YELP, read_sentences
from tests.fixtures.broker import isolated_settings
from tests.monitoring.stack import AdapterProcess
from tuneloop.events.broker import free_port
from tuneloop.registry import Registry, State
from tuneloop.settings import load_settings

TINY = {"epochs": 1, "batch_size": 16, "max_length": 32, "learning_rate": 1e-3}
# Loose enough that the tiny model passes (the gates' own tests judge real candidates); fresh_gain is off
# because a tiny model's two versions often agree on every fresh row, and then nothing is significant.
PASSING = {"golden": {"max_drop": 1.0}, "class_recall": {"min_recall": 0.0}, "fresh_gain": None, "latency": None}


@dataclass
class AdminWorld:
    adapter: AdapterProcess
    registry: Registry
    tokens: dict[str, str]  # name → the token itself
    candidates: list[str]  # awaiting approval, oldest first
    admin_port: int

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.adapter.log.read_text(errors="replace")


def retrain_candidates(root: Path, store_url: str, workdir: Path, count: int) -> list[str]:
    """``count`` candidates awaiting approval, each retrained on fresh yelp feedback by the adapter's Retrainer."""
    settings = load_settings(registry=str(root), adapter={"store_url": store_url, "workdir": str(workdir)})
    registry, store = Registry(root), LabelStore(store_url)
    policy = AdapterPolicy.model_validate({"triggers": {"min_fresh_examples": 40},
                                           "retraining": {"hyperparameters": TINY}, "gates": PASSING})
    rows = read_sentences(YELP)
    random.Random(3).shuffle(rows)
    made = []
    for i in range(count):
        feed(store, rows[i * 80:(i + 1) * 80])
        store.add_trigger("manual", {"actor": "test", "reason": f"candidate {i}"})
        outcome = Retrainer(settings, policy, store, registry).run_if_due()
        assert outcome is not None and outcome.state == State.AWAITING_APPROVAL, outcome
        made.append(outcome.version)
    return made


def start_admin_world(folder: Path, served_registry: Path, bootstrap_servers: str, monitor_url: str,
                      candidates: int = 2) -> AdminWorld:
    root = folder / "registry"
    shutil.copytree(served_registry, root)
    store_url = f"sqlite:///{folder / 'labels.db'}"
    made = retrain_candidates(root, store_url, folder / "work", candidates)
    tokens_file = folder / "admin-tokens.yaml"
    tokens = {name: add_token(tokens_file, name, role)
              for name, role in (("olga", Role.OPERATOR), ("vera", Role.VIEWER))}
    (folder / "policy.yaml").write_text("triggers: {min_fresh_examples: 100000}\n")  # no retraining by itself
    (folder / "webhook-token").write_text("admin-tests-webhook")
    admin_port = free_port()
    kafka = isolated_settings(bootstrap_servers, folder / "spool")
    adapter = AdapterProcess(folder, root, kafka, store_url, folder / "policy.yaml", folder / "webhook-token",
                             env={"TUNELOOP_ADAPTER__ADMIN_PORT": str(admin_port),
                                  "TUNELOOP_ADAPTER__ADMIN_TOKENS_FILE": str(tokens_file),
                                  "TUNELOOP_ADAPTER__MONITOR_URL": monitor_url})
    adapter.start()
    world = AdminWorld(adapter, Registry(root), tokens, made, admin_port)
    deadline = time.monotonic() + 30
    while True:  # the admin server starts just after the webhook's, which start() waited for
        try:
            httpx.get(f"{world.admin_url}/console/login", timeout=2)
            return world
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
