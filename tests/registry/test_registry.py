"""The registry: publishing, checksums, atomicity, the life cycle and its audit log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuneloop.registry import (
    CorruptVersionError,
    IllegalTransitionError,
    NothingToRollBackToError,
    Registry,
    RegistryError,
    State,
    VersionNotFoundError,
)
from tests.registry.versions import approve, make_staging, publish


def test_publish_assigns_increasing_versions_and_verifies(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    v1, v2 = publish(reg, tmp_path, "a"), publish(reg, tmp_path, "b")
    assert (v1, v2) == ("v1", "v2")
    assert [s.version for s in reg.list_versions()] == ["v1", "v2"]
    assert reg.state(v1) == State.CANDIDATE
    opened = reg.open_version(v1)
    assert opened.card.version == "v1"
    assert opened.labels == ["0", "1"]
    assert opened.onnx_path("fp32").read_bytes().startswith(b"weights")
    assert opened.reference()["embeddings"].shape == (2, 4)


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    version = publish(reg, tmp_path)
    stored = tmp_path / "reg" / "versions" / version / "onnx" / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match="onnx/model.onnx"):
        reg.open_version(version)
    approve(reg, version)
    with pytest.raises(CorruptVersionError):
        reg.promote(version, "alice", "should be refused")
    assert reg.production() is None


def test_missing_file_is_detected(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    version = publish(reg, tmp_path)
    (tmp_path / "reg" / "versions" / version / "labels.json").unlink()
    with pytest.raises(CorruptVersionError, match="labels.json is missing"):
        reg.open_version(version)


def test_exception_mid_write_leaves_no_visible_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "reg")
    import tuneloop.registry.store as store

    real_copy = store.shutil.copyfile
    calls = {"n": 0}

    def failing_copy(src, dst):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(store.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(reg, tmp_path)
    assert reg.list_versions() == []
    with pytest.raises(VersionNotFoundError):
        reg.open_version("v1")


def test_process_killed_mid_write_leaves_no_visible_version(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of copying: the half-written folder stays invisible."""
    root = tmp_path / "reg"
    stage = make_staging(tmp_path / "stage")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from versions import make_card
        import tuneloop.registry.store as store
        from tuneloop.registry import Registry
        real = store.shutil.copyfile
        count = [0]
        def copy_then_die(src, dst):
            count[0] += 1
            real(src, dst)
            if count[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        store.shutil.copyfile = copy_then_die
        Registry({str(root)!r}).publish({str(stage)!r}, make_card(), actor="test")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    leftovers = [p.name for p in (root / "versions").iterdir()]
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers)  # it did start writing
    reg = Registry(root)
    assert reg.list_versions() == []
    assert publish(reg, tmp_path, "after") == "v1"


def test_life_cycle_promote_and_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    v1, v2 = publish(reg, tmp_path, "a"), publish(reg, tmp_path, "b")
    approve(reg, v1)
    assert reg.promote(v1, "alice", "first model") is None
    assert reg.production() == v1
    approve(reg, v2)
    assert reg.promote(v2, "alice", "better on fresh data") == v1
    assert (reg.production(), reg.state(v1), reg.state(v2)) == (v2, State.RETIRED, State.PRODUCTION)
    assert reg.rollback("bob", "error rate rose") == (v2, v1)
    assert (reg.production(), reg.state(v1), reg.state(v2)) == (v1, State.PRODUCTION, State.ROLLED_BACK)
    with pytest.raises(NothingToRollBackToError):
        reg.rollback("bob", "again")
    trail = [(e.version, e.from_state, e.to_state, e.actor) for e in reg.audit_log()]
    assert trail[-2:] == [(v2, "production", "rolled_back", "bob"), (v1, "retired", "production", "bob")]
    assert all(e.at and e.reason for e in reg.audit_log())


@pytest.mark.parametrize(
    ("steps", "target"),
    [
        ([], State.APPROVED),  # candidate cannot skip the gates
        ([State.REJECTED], State.AWAITING_APPROVAL),  # rejected is final
    ],
)
def test_illegal_transitions_are_refused(tmp_path: Path, steps: list[State], target: State) -> None:
    reg = Registry(tmp_path / "reg")
    version = publish(reg, tmp_path)
    for step in steps:
        reg.transition(version, step, "test", "setup")
    with pytest.raises(IllegalTransitionError, match="may go to"):
        reg.transition(version, target, "test", "illegal")


def test_promote_requires_approval_and_production_only_through_promote(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    version = publish(reg, tmp_path)
    with pytest.raises(IllegalTransitionError):
        reg.promote(version, "alice", "not approved yet")
    with pytest.raises(RegistryError, match="use promote"):
        reg.transition(version, State.PRODUCTION, "alice", "sneaky")


def test_fsspec_memory_filesystem(tmp_path: Path) -> None:
    """Non-local roots go through fsspec: the manifest written last marks a complete version."""
    reg = Registry("memory://tuneloop-test-registry", cache_dir=tmp_path / "cache")
    version = publish(reg, tmp_path)
    approve(reg, version)
    reg.promote(version, "alice", "remote")
    opened = reg.open_version(version)
    assert opened.path.is_relative_to(tmp_path / "cache")
    assert opened.onnx_path().read_bytes().startswith(b"weights")
    assert Registry("memory://tuneloop-test-registry").production() == version


def test_unknown_version_is_a_clear_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(VersionNotFoundError, match="'v9' not found"):
        reg.card("v9")
    with pytest.raises(VersionNotFoundError):
        reg.state("../etc")


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    script = textwrap.dedent(f"""
        import sys, tempfile
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from versions import make_card, make_staging
        from tuneloop.registry import Registry
        stage = make_staging(Path(tempfile.mkdtemp()) / "s")
        print(Registry({str(root)!r}).publish(stage, make_card(), actor="p"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) for _ in range(4)]
    versions = sorted(p.communicate(timeout=120)[0].decode().strip() for p in procs)
    assert versions == ["v1", "v2", "v3", "v4"]
    assert os.path.isdir(root / "versions" / "v4")


def test_listeners_hear_every_committed_change(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    heard: list[tuple[str, str | None, str, str]] = []
    reg.listeners.append(lambda entries: heard.extend((e.version, e.from_state, e.to_state, e.actor) for e in entries))
    version = publish(reg, tmp_path)
    approve(reg, version)
    reg.promote(version, "carol", "first")
    assert heard == [(version, None, "candidate", "test"), (version, "candidate", "awaiting_approval", "test"),
                     (version, "awaiting_approval", "approved", "alice"), (version, "approved", "production", "carol")]
