"""What the registry does with what crashed writers and older versions of it left behind: stale staging
folders, unregistered versions, partial or damaged downloads, torn commits, the layout before commits/."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.registry import objstore
from tests.registry.versions import approve, make_card, make_staging
from tuneloop.registry import Registry, State
from tuneloop.registry import journal as journal_module
from tuneloop.registry import store as store_module

HOUR = 3600.0


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (then, then))


def test_stale_staging_is_removed_on_publish_and_fresh_staging_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = Registry(root)
    stale = root / "versions" / ".tmp-0123abcd"
    (stale / "onnx").mkdir(parents=True)
    (stale / "onnx" / "model.onnx").write_bytes(b"half a model")
    fresh = root / "versions" / ".tmp-fedc3210"
    fresh.mkdir()
    stale_commit = root / "commits" / ".tmp-0badc0de"
    stale_commit.write_text("{")
    stale_state = root / "state" / f"v1.json.tmp-{'a' * 32}"  # what the layout before commits/ left
    stale_state.write_text("{")
    for path in (stale, stale_commit, stale_state):
        age(path, 2 * HOUR)

    assert reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="t") == "v1"
    assert not stale.exists() and not stale_commit.exists() and not stale_state.exists()
    assert fresh.exists()  # younger than an hour: left alone


def test_a_dead_upload_on_an_object_store_is_cleaned_and_its_number_never_reused(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = Registry(f"objdir://{root}", cache_dir=tmp_path / "cache")
    dead = root / "versions" / "v1"
    (dead / "onnx").mkdir(parents=True)
    (dead / "onnx" / "model.onnx").write_bytes(b"half a model")
    claimed_at = "2020-01-01T00:00:00+00:00"
    (dead / ".claim").write_text(json.dumps({"claimed_at": claimed_at, "host": "gone", "pid": 1}))

    assert reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="t") == "v2"
    assert sorted(p.name for p in dead.rglob("*") if p.is_file()) == [".claim"]
    assert [s.version for s in reg.list_versions()] == ["v2"]


def orphan(reg: Registry, tmp_path: Path, tag: str) -> str:
    """A version whose files are complete but whose publisher died before its commit."""
    version = reg._claim_version()
    staging = make_staging(tmp_path / f"orphan-{tag}")
    reg._write_card(staging, make_card(), version)
    reg._copy_with_manifest(staging, reg._p("versions", version), version)
    return version


def test_an_unregistered_version_reads_as_candidate_and_is_adopted_once_old_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(f"objdir://{tmp_path / 'reg'}", cache_dir=tmp_path / "cache")
    lost = orphan(reg, tmp_path, "a")
    assert reg.state(lost) == State.CANDIDATE
    assert {s.version: s.state for s in reg.list_versions()} == {lost: "candidate"}
    reg.transition(lost, State.AWAITING_APPROVAL, "ops", "an orphan can move on like any candidate")

    young = orphan(reg, tmp_path, "b")
    reg.publish(make_staging(tmp_path / "stage-1"), make_card(), actor="t")
    # It may be a publish still between its manifest and its commit: not recorded yet.
    assert not reg.audit_log(young)
    monkeypatch.setattr(store_module, "REMOTE_ADOPT_AFTER_S", 0.0)
    reg.publish(make_staging(tmp_path / "stage-2"), make_card(), actor="t")
    adopted = [(e.from_state, e.to_state, e.actor) for e in reg.audit_log(young)]
    assert adopted == [(None, "candidate", "registry")]


def test_a_damaged_cached_file_is_fetched_again(tmp_path: Path) -> None:
    reg = Registry(f"objdir://{tmp_path / 'reg'}", cache_dir=tmp_path / "cache")
    version = reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="t")
    cached = reg.open_version(version).onnx_path()
    original = cached.read_bytes()
    cached.write_bytes(original[:100])  # a download killed midway, or a disk that lost the tail
    assert reg.open_version(version).onnx_path().read_bytes() == original


def test_a_download_that_fails_midway_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(f"objdir://{tmp_path / 'reg'}", cache_dir=tmp_path / "cache")
    version = reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="t")
    real_get = objstore.ObjDirFileSystem.get_file
    calls = {"n": 0}

    def flaky_get(self: objstore.ObjDirFileSystem, rpath: str, lpath: str, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("connection reset")
        real_get(self, rpath, lpath, *args, **kwargs)

    monkeypatch.setattr(objstore.ObjDirFileSystem, "get_file", flaky_get)
    with pytest.raises(ConnectionError):
        reg.open_version(version)
    assert not any(p.is_dir() and p.name.startswith(f"{version}-") for p in (tmp_path / "cache").rglob("*"))
    opened = reg.open_version(version, verify=False)  # the next try downloads afresh, and checks it
    assert opened.onnx_path().read_bytes().startswith(b"weights")


def test_processes_share_the_cache_and_download_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(f"objdir://{tmp_path / 'reg'}", cache_dir=tmp_path / "cache")
    version = reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="t")
    downloads: list[str] = []
    monkeypatch.setattr(objstore.ObjDirFileSystem, "on_mutation",
                        staticmethod(lambda what: downloads.append(what) if what == "get_file" else None))
    paths: list[Path] = []

    def load() -> None:
        reader = Registry(f"objdir://{tmp_path / 'reg'}", cache_dir=tmp_path / "cache")
        paths.append(reader.open_version(version).path)

    threads = [threading.Thread(target=load) for _ in range(4)]  # separate flock holders, like processes
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(paths) == 4 and len(set(paths)) == 1
    manifest = json.loads((tmp_path / "reg" / "versions" / version / "MANIFEST.json").read_text())
    assert len(downloads) == len(manifest["files"])


def make_legacy(root: Path) -> None:
    """Turn a registry into the layout before commits/: state/vN.json, production.json, audit/ files."""
    shutil.rmtree(root / "commits")


def test_a_registry_in_the_old_layout_is_read_and_migrated_by_its_first_change(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = Registry(root)
    for tag in ("a", "b", "c"):
        approve(reg, reg.publish(make_staging(tmp_path / f"stage-{tag}"), make_card(), actor="t"))
    reg.promote("v1", "ops", "first")
    reg.promote("v2", "ops", "second")
    trail = [(e.version, e.to_state) for e in reg.audit_log()]
    make_legacy(root)
    (root / "state" / "v3.json").unlink()  # the old publish could die before writing it

    old = Registry(root)
    states = {s.version: s.state for s in old.list_versions()}
    assert states == {"v1": "retired", "v2": "production", "v3": "candidate"}
    assert (old.production(), old.production_history()) == ("v2", ["v1"])
    assert [(e.version, e.to_state) for e in old.audit_log()] == trail
    assert not list((root / "commits").iterdir())  # reading wrote nothing

    old.transition("v3", State.AWAITING_APPROVAL, "ops", "first change after the upgrade")
    assert [p.name for p in (root / "commits").iterdir()] == ["000000000001.json"]
    migrated = json.loads((root / "commits" / "000000000001.json").read_text())
    assert migrated["versions"] == {"v1": "retired", "v2": "production", "v3": "awaiting_approval"}
    assert migrated["production"]["version"] == "v2" and migrated["production"]["previous"] == ["v1"]
    assert old.rollback("ops", "after the upgrade") == ("v2", "v1")


@pytest.mark.parametrize(
    ("states", "pointer", "expected"),
    [
        # the old promote died after moving the states, before production.json
        ({"v1": "retired", "v2": "production"}, {"version": "v1", "previous": []}, ("v2", ["v1"])),
        # the old rollback died the same way
        ({"v1": "production", "v2": "rolled_back"}, {"version": "v2", "previous": ["v1"]}, ("v1", [])),
    ],
)
def test_an_old_layout_interrupted_mid_promotion_reads_as_finished(
    tmp_path: Path, states: dict[str, str], pointer: dict[str, object], expected: tuple[str, list[str]]
) -> None:
    root = tmp_path / "reg"
    reg = Registry(root)
    for tag in states:
        reg.publish(make_staging(tmp_path / f"stage-{tag}"), make_card(), actor="t")
    make_legacy(root)
    for version, state in states.items():
        (root / "state" / f"{version}.json").write_text(json.dumps({"state": state}))
    (root / "production.json").write_text(json.dumps(pointer))
    reg = Registry(root)
    assert (reg.production(), reg.production_history()) == expected


def test_a_torn_commit_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = Registry(root)
    version = reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="t")
    newest = max((root / "commits").iterdir())
    torn = newest.with_name(f"{int(newest.stem) + 1:012d}.json")
    torn.write_text('{"format": 1, "revis')  # a mount without hard links, and a writer killed mid-write
    assert reg.state(version) == State.CANDIDATE
    reg.transition(version, State.AWAITING_APPROVAL, "ops", "after the torn commit")
    assert reg.state(version) == State.AWAITING_APPROVAL
    assert max((root / "commits").iterdir()).stem == f"{int(newest.stem) + 2:012d}"


def test_old_commits_are_pruned_and_the_audit_log_keeps_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "KEEP_COMMITS", 3)
    root = tmp_path / "reg"
    reg = Registry(root)
    versions = [reg.publish(make_staging(tmp_path / f"stage-{i}"), make_card(), actor="t") for i in range(4)]
    for version in versions:
        approve(reg, version)
    assert len(list((root / "commits").iterdir())) <= 4
    assert len(reg.audit_log()) == 4 * 3
