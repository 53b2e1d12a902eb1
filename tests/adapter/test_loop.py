"""The whole loop on real parts and the real data:

    tuneloop serve (MiniLM trained on amazon) → Kafka → tuneloop monitor → Prometheus (rules.yml)
    → Alertmanager (the rendered alertmanager.yml) → tuneloop adapt's webhook → a retraining
    → SIGKILL of the adapter mid-retraining → restart: the interrupted run reported, a new one done
    → gates → approval from the CLI → the service hot-swaps under load with no failed request
    → the served version's accuracy on an imdb test set never labelled rises, amazon's does not fall beyond ε.

imdb (movie reviews) is the new domain: it moves the amazon model further than yelp does, so that a few hundred
labels buy a gain the gates can establish (bench/results/adaptation.md).

Only the waits are shortened (the rules' `for:`, Alertmanager's group timers, the adapter's tick).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from adapter.loop.store import LabelStore
from monitoring.alerting import render_alertmanager_config
from tests.conftest import IMDB, ROOT, read_sentences
from tests.fixtures.broker import isolated_settings, kafka_env
from tests.monitoring.stack import (AdapterProcess, AlertmanagerProcess, MonitorProcess, PrometheusProcess,
                                    shortened_routing, shortened_rules)
from tests.server_process import ServerProcess
from tuneloop.events.client_config import ensure_topics
from tuneloop.registry import Registry

TOKEN = "loop-webhook-token"
AMAZON_FALL = 0.02  # ε: what the served amazon accuracy may lose
# All 600 labels before a run, so that what it trains on does not depend on timing. The corpus holds 1000
# sentences a domain: the fresh test set is 150 of them, and a gain of 3 points there (won 15, lost 11, measured)
# is not significant at 0.05; the gates' statistics are tested on their own (test_policy_and_gates.py), and
# here the fresh gain must be 2 points and more wins than losses (alpha 0.5). Everything else is the default.
POLICY = """\
triggers: {min_fresh_examples: 600, label_volume: null}
gates: {fresh_gain: {alpha: 0.5}}
"""


def wait(predicate, timeout: float, what: str, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.5)


def accuracy(http: httpx.Client, rows: list[tuple[str, str]]) -> tuple[float, set[str]]:
    correct, versions = 0, set()
    for start in range(0, len(rows), 16):
        chunk = rows[start:start + 16]
        body = http.post("/classify", json={"texts": [t for t, _ in chunk]}).json()
        correct += sum(p["label"] == label for (_, label), p in zip(chunk, body["predictions"]))
        versions.add(body["model_version"])
    return correct / len(rows), versions


def send_with_feedback(http: httpx.Client, rows: list[tuple[str, str]]) -> None:
    for start in range(0, len(rows), 10):
        chunk = rows[start:start + 10]
        body = http.post("/classify", json={"texts": [t for t, _ in chunk]}).json()
        feedback = [{"request_id": p["request_id"], "label": label, "source": "test"}
                    for (_, label), p in zip(chunk, body["predictions"])]
        assert http.post("/feedback", json={"feedback": feedback}).status_code == 202


@pytest.mark.slow
def test_the_loop_from_drift_to_a_hot_swapped_better_model(minilm_amazon, kafka_broker, tmp_path: Path) -> None:
    registry_root = minilm_amazon.registry_copy(tmp_path / "registry")
    kafka = isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool", partitions=1)
    ensure_topics(kafka)
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "policy.yaml").write_text(POLICY)
    store_url = f"sqlite:///{tmp_path / 'labels.db'}"
    for folder in ("alertmanager", "prometheus", "monitor", "adapter"):
        (tmp_path / folder).mkdir()
    adapter = AdapterProcess(tmp_path / "adapter", registry_root, kafka, store_url, tmp_path / "policy.yaml",
                             tmp_path / "token")
    imdb = read_sentences(IMDB)
    random.Random(5).shuffle(imdb)
    traffic, held_out = imdb[:600], imdb[600:]  # the held-out 400 are never labelled for the adapter
    amazon_test = list(zip(minilm_amazon.data.test.texts,
                           [minilm_amazon.data.label_names[y] for y in minilm_amazon.data.test.labels]))
    store = LabelStore(store_url)

    with ServerProcess(registry_root, tmp_path / "server.log", grpc=False, env=kafka_env(kafka)) as server, \
            MonitorProcess(tmp_path / "monitor", registry_root, kafka) as monitor, adapter, \
            AlertmanagerProcess(tmp_path / "alertmanager", shortened_routing(
                render_alertmanager_config(f"{adapter.url}/alerts", tmp_path / "token"))) as alertmanager, \
            PrometheusProcess(tmp_path / "prometheus", {"tuneloop-monitor": f"127.0.0.1:{monitor.port}"},
                              rule_files=[shortened_rules(tmp_path / "prometheus")],
                              alertmanager=f"127.0.0.1:{alertmanager.port}"), \
            httpx.Client(base_url=server.url, timeout=60) as http:
        logs = lambda: f"adapter: {adapter.tail()}\nmonitor: {monitor.tail(1500)}"  # noqa: E731
        before_new, _ = accuracy(http, held_out)
        before_amazon, _ = accuracy(http, amazon_test)
        names = minilm_amazon.data.label_names
        home = list(zip(minilm_amazon.data.train.texts, [names[y] for y in minilm_amazon.data.train.labels]))
        accuracy(http, home[:200])  # the home domain first: no drift (and no labels: annotators label the new)
        send_with_feedback(http, traffic)

        # Drift reaches the adapter through Prometheus and Alertmanager, and a retraining starts from it.
        wait(lambda: any(t.kind == "drift_alert" for t in store.triggers()), 240, "the drift alert", logs)
        wait(lambda: adapter.status()["retraining"] is not None, 240, "a retraining to start", logs)
        first = adapter.status()["retraining"]

        # Killed mid-retraining, restarted: the run is reported interrupted and a new one takes its triggers.
        adapter.kill()
        adapter.start()
        wait(lambda: store.runs("interrupted") and adapter.status()["last_outcome"], 900, "a completed run", logs)
        assert store.runs("interrupted")[0].id == first and f"retraining run {first}" in adapter.tail(20000)
        outcome = adapter.status()["last_outcome"]
        version = outcome["version"]
        card = Registry(registry_root).card(version)
        assert card.lineage.parent_version == minilm_amazon.version
        assert "drift_alert" in {t["kind"] for t in card.lineage.triggers}
        assert outcome["state"] == "awaiting_approval", outcome["reasons"]

        # An operator approves from the CLI; the service swaps under load without one failed request.
        statuses: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    statuses.append(client.post("/classify", json={"texts": ["still answering"]}).status_code)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        for command in (["approve", version, "--reason", "gates passed"], ["promote", version]):
            done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "models", *command, "--registry",
                                   str(registry_root), "--actor", "operator"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120, env={**os.environ, **kafka_env(kafka)})
            assert done.returncode == 0, done.stderr
        wait(lambda: accuracy(http, held_out[:16])[1] == {version}, 120, "the hot swap", lambda: server.tail())
        time.sleep(1)
        stop.set()
        asker.join()
        assert statuses and set(statuses) == {200}

        after_new, versions = accuracy(http, held_out)
        after_amazon, _ = accuracy(http, amazon_test)
    assert versions == {version}
    print(f"served imdb {before_new:.3f} -> {after_new:.3f}, amazon {before_amazon:.3f} -> {after_amazon:.3f}")
    assert after_new > before_new
    assert after_amazon >= before_amazon - AMAZON_FALL
