"""`tuneloop models …` as an operator runs them: reject, verify, promote and rollback, with their audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.registry.versions import approve, publish
from tuneloop.registry import Registry, State


def models(registry: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop.cli", "models", *args, "--registry", str(registry)],
                          capture_output=True, text=True, timeout=120)


def test_reject_verify_and_rollback_from_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    registry = Registry(root)
    v1, v2, v3 = (publish(registry, tmp_path, tag) for tag in "abc")
    for version in (v1, v2):
        approve(registry, version)
    registry.transition(v3, State.AWAITING_APPROVAL, "adapter", "gates passed")

    assert models(root, "promote", v1, "--actor", "alice").returncode == 0
    assert models(root, "promote", v2, "--actor", "alice").returncode == 0
    rejected = models(root, "reject", v3, "--reason", "no gain on yelp", "--actor", "bob")
    assert rejected.returncode == 0 and f"{v3} → rejected" in rejected.stdout

    verified = models(root, "verify", v2)
    assert verified.returncode == 0 and "every file matches its checksum" in verified.stdout

    rolled = models(root, "rollback", "--reason", "live accuracy fell", "--actor", "carol")
    assert rolled.returncode == 0 and f"{v2} rolled back; {v1} is in production again" in rolled.stdout
    listed = {row["version"]: row for row in json.loads(models(root, "list", "--json").stdout)}
    assert {v: row["state"] for v, row in listed.items()} == {v1: "production", v2: "rolled_back", v3: "rejected"}
    assert listed[v1]["production"] and not listed[v2]["production"]

    audit = json.loads(models(root, "show", v2, "--json").stdout)["audit"]
    assert (audit[-1]["to_state"], audit[-1]["actor"], audit[-1]["reason"]) == ("rolled_back", "carol",
                                                                                 "live accuracy fell")
    assert json.loads(models(root, "show", v3, "--json").stdout)["audit"][-1]["actor"] == "bob"


def test_verify_names_a_damaged_file_and_a_second_rollback_has_nothing_to_return_to(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    registry = Registry(root)
    version = publish(registry, tmp_path)
    approve(registry, version)
    registry.promote(version, "test", "the only one")
    graph = root / "versions" / version / "onnx" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"!")
    damaged = models(root, "verify", version)
    assert damaged.returncode == 2 and "onnx/model.onnx has sha256" in damaged.stderr
    assert "Traceback" not in damaged.stderr
    nothing = models(root, "rollback", "--reason", "try")
    assert nothing.returncode == 2 and "nothing to roll back to" in nothing.stderr


def test_each_cli_transition_is_published_on_the_model_events_topic(tmp_path: Path, kafka_broker) -> None:
    from tests.fixtures.broker import consume_until, isolated_settings, kafka_env

    root = tmp_path / "registry"
    registry = Registry(root)
    version = publish(registry, tmp_path)
    registry.transition(version, State.AWAITING_APPROVAL, "adapter", "gates passed")
    kafka = isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool")
    env = {**os.environ, **kafka_env(kafka)}
    for args in (["approve", version, "--reason", "looks good"], ["promote", version]):
        done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "models", *args, "--registry", str(root),
                               "--actor", "alice"], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
    events = sorted((e.data for e in consume_until(kafka, ["model-events"], 2)), key=lambda e: e.timestamp)
    assert [(e.kind, e.version, e.transition, e.actor) for e in events] == [
        ("transition", version, "awaiting_approval->approved", "alice"),
        ("transition", version, "approved->production", "alice")]
    assert events[0].reason == "looks good"
    assert not list((tmp_path / "spool").glob("p-*"))  # delivered: the CLI leaves no spool folder behind
