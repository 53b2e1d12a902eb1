"""Concurrent writers on object stores: conditional writes where the store has them, a lease where it has not.

``memory://`` is not a local filesystem, so the registry treats it as an object store; fsspec's memory backend
checks-then-writes on ``mode="create"`` (not atomic), so ``auto`` coordinates it with the lease. ``objdir://``
(objstore.py) has an atomic create and runs the conditional-write path.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.registry import objstore
from tests.registry.versions import approve, make_card, make_staging
from tuneloop.registry import Registry, RegistryBusyError
from tuneloop.registry.coordination import (
    ObjectStoreCoordinator,
    is_precondition_failure,
    native_put_if_absent,
)


def roots(tmp_path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "memory-lease": (f"memory://concurrent-{uuid.uuid4().hex}", {}),
        "objdir-conditional": (f"objdir://{tmp_path / 'reg'}", {"coordination": "conditional"}),
        "objdir-lease": (f"objdir://{tmp_path / 'reg'}", {"coordination": "lease"}),
        "local": (str(tmp_path / "reg"), {}),
    }


def run_together(*actions: Any) -> list[Any]:
    """Start the actions at the same moment, one thread each; their results, or the first exception."""
    start = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = actions[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("where", ["memory-lease", "objdir-conditional", "objdir-lease", "local"])
def test_concurrent_publishers_get_distinct_versions(where: str, tmp_path: Path) -> None:
    root, options = roots(tmp_path)[where]
    stages = [make_staging(tmp_path / f"stage-{i}") for i in range(4)]

    def publisher(stage: Path) -> Any:
        return lambda: open_registry().publish(stage, make_card(), actor="p")

    def open_registry() -> Registry:
        return Registry(root, cache_dir=tmp_path / "cache", **options)

    versions = run_together(*(publisher(stage) for stage in stages))
    assert sorted(versions) == ["v1", "v2", "v3", "v4"]
    reg = Registry(root, cache_dir=tmp_path / "cache", **options)
    assert {s.version: s.state for s in reg.list_versions()} == {v: "candidate" for v in versions}
    assert Counter(e.version for e in reg.audit_log()) == {v: 1 for v in versions}
    for version in versions:
        reg.verify(version)


@pytest.mark.parametrize("where", ["memory-lease", "objdir-conditional", "objdir-lease", "local"])
def test_concurrent_promotions_keep_one_production_and_the_whole_history(where: str, tmp_path: Path) -> None:
    root, options = roots(tmp_path)[where]
    reg = Registry(root, cache_dir=tmp_path / "cache", **options)
    for tag in ("a", "b", "c"):
        approve(reg, reg.publish(make_staging(tmp_path / f"stage-{tag}"), make_card(), actor="setup"))
    reg.promote("v1", "setup", "first")

    def promoter(version: str) -> Any:
        return lambda: Registry(root, cache_dir=tmp_path / "cache", **options).promote(version, "ops", "race")

    replaced = run_together(promoter("v2"), promoter("v3"))
    winner = reg.production()
    loser = "v3" if winner == "v2" else "v2"
    # Whichever committed second replaced the first: no promotion was lost, the history has both.
    assert sorted(replaced) == sorted(["v1", loser])
    assert reg.production_history() == [loser, "v1"]
    states = {s.version: s.state for s in reg.list_versions()}
    assert states == {"v1": "retired", loser: "retired", winner: "production"}
    trail = Counter((e.version, e.from_state, e.to_state) for e in reg.audit_log())
    assert trail[("v1", "production", "retired")] == 1
    assert trail[(loser, "production", "retired")] == 1
    assert trail[("v2", "approved", "production")] == trail[("v3", "approved", "production")] == 1


def test_a_store_that_ignores_conditional_writes_falls_back_to_the_lease(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    reg = Registry(f"objdir-sloppy://{tmp_path / 'reg'}", cache_dir=cache, coordination="conditional")
    reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="p")
    assert "lease" in reg._coordinator.describe()
    honest = Registry(f"objdir://{tmp_path / 'reg2'}", cache_dir=cache, coordination="conditional")
    honest.publish(make_staging(tmp_path / "stage2"), make_card(), actor="p")
    assert "conditional" in honest._coordinator.describe()


def test_a_live_lease_makes_writers_wait_then_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ObjectStoreCoordinator, "lease_wait_s", 0.3)
    root = tmp_path / "reg"
    reg = Registry(f"objdir://{root}", cache_dir=tmp_path / "cache", coordination="lease")
    version = reg.publish(make_staging(tmp_path / "stage"), make_card(), actor="p")
    lease = {"owner": "someone", "host": "builder-7", "pid": 42, "expires_at": 9e12}
    (root / ".lease").write_text(json.dumps(lease))
    with pytest.raises(RegistryBusyError, match="builder-7:42"):
        reg.transition(version, "awaiting_approval", "ops", "blocked by a live lease")
    (root / ".lease").write_text(json.dumps({**lease, "expires_at": 0}))  # its holder died long ago
    reg.transition(version, "awaiting_approval", "ops", "the expired lease is taken over")
    assert reg.state(version) == "awaiting_approval"


class FakeS3:
    """Just enough of s3fs for the adapter: PutObject's ``IfNoneMatch`` as S3 honours it."""

    protocol = ("s3", "s3a")

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.calls: list[dict[str, Any]] = []

    def pipe_file(self, path: str, data: bytes, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        if kwargs.get("IfNoneMatch") == "*" and path in self.objects:
            # what s3fs raises for a 412 (translate_boto_error keeps the code in the message)
            raise OSError("An error occurred (PreconditionFailed) when calling the PutObject operation: "
                          "At least one of the pre-conditions you specified did not hold")
        self.objects[path] = data


    def rm_file(self, path: str) -> None:
        self.objects.pop(path, None)


class FakeGCS(FakeS3):
    protocol = ("gs", "gcs")

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        self.calls.append({"mode": mode, **kwargs})
        if mode == "create" and path in self.objects:
            raise FileExistsError(path)
        self.objects[path] = data


@pytest.mark.parametrize("store", [FakeS3, FakeGCS])
def test_native_conditional_writes_turn_a_lost_race_into_file_exists(store: type[FakeS3]) -> None:
    fs = store()
    put = native_put_if_absent(fs)  # type: ignore[arg-type]
    assert put is not None
    put("bucket/commits/000000000001.json", b"mine")
    with pytest.raises(FileExistsError):
        put("bucket/commits/000000000001.json", b"theirs")
    assert fs.objects["bucket/commits/000000000001.json"] == b"mine"
    assert all(call.get("IfNoneMatch") == "*" or call.get("mode") == "create" for call in fs.calls)


class OldGCS(FakeS3):
    """A gcsfs release from before ``mode="create"``."""

    protocol = ("gs", "gcs")

    def pipe_file(self, path: str, data: bytes) -> None:  # type: ignore[override]
        self.objects[path] = data


class DeniedS3(FakeS3):
    def pipe_file(self, path: str, data: bytes, **kwargs: Any) -> None:
        raise PermissionError("Access Denied")


def test_the_probe_picks_the_lease_only_where_conditional_writes_are_missing() -> None:
    assert ObjectStoreCoordinator(FakeS3(), "bucket/reg")._resolve() == "conditional"  # type: ignore[arg-type]
    assert ObjectStoreCoordinator(OldGCS(), "bucket/reg")._resolve() == "lease"  # type: ignore[arg-type]
    denied = ObjectStoreCoordinator(DeniedS3(), "bucket/reg")  # type: ignore[arg-type]
    with pytest.raises(PermissionError):  # not a reason to give up conditional writes: the caller hears of it
        denied._resolve()
    assert "not yet probed" in denied.describe()


def test_unknown_backends_get_no_conditional_writes_unless_vouched_for() -> None:
    fs = objstore.ObjDirFileSystem()
    assert native_put_if_absent(fs) is None
    assert native_put_if_absent(fs, trust_fsspec_create=True) is not None


def test_precondition_failures_are_recognised() -> None:
    class ClientError(Exception):
        def __init__(self, code: str, status: int) -> None:
            super().__init__(f"An error occurred ({code})")
            self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}

    assert is_precondition_failure(ClientError("ConditionalRequestConflict", 409))
    wrapped = OSError("put failed")
    wrapped.__cause__ = ClientError("PreconditionFailed", 412)
    assert is_precondition_failure(wrapped)
    assert is_precondition_failure(OSError("HTTP 412 Precondition Failed"))
    assert not is_precondition_failure(FileNotFoundError("/models/412/versions/v1"))
    assert not is_precondition_failure(PermissionError("Access Denied"))


def test_a_writer_stalled_past_its_lease_loses_its_change_and_breaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's promise for stores without conditional writes: a stall past the lease may lose the stalled
    writer's change, never half-apply it; a retry then goes through."""
    import time

    monkeypatch.setattr(ObjectStoreCoordinator, "lease_ttl_s", 1.0)
    root = f"objdir://{tmp_path / 'reg'}"
    stalled = Registry(root, cache_dir=tmp_path / "cache-a", coordination="lease")
    other = Registry(root, cache_dir=tmp_path / "cache-b", coordination="lease")
    v1 = stalled.publish(make_staging(tmp_path / "stage1"), make_card(), actor="p")
    v2 = other.publish(make_staging(tmp_path / "stage2"), make_card(), actor="p")
    real_create, paused = stalled._coordinator.create, threading.Event()

    def create_after_a_stall(path: str, data: bytes) -> None:
        paused.set()
        time.sleep(1.5)  # a GC pause, a preempted VM: the lease runs out meanwhile
        real_create(path, data)

    monkeypatch.setattr(stalled._coordinator, "create", create_after_a_stall)
    outcome: list[BaseException | None] = []

    def stalled_transition() -> None:
        try:
            stalled.transition(v1, "awaiting_approval", "a", "stalls before its commit")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=stalled_transition)
    thread.start()
    assert paused.wait(30)
    time.sleep(1.1)  # its lease has expired: another writer takes over and commits
    other.transition(v2, "awaiting_approval", "b", "took the expired lease")
    thread.join(30)
    assert isinstance(outcome[0], RegistryBusyError), outcome  # lost, and told so
    fresh = Registry(root, cache_dir=tmp_path / "cache-c", coordination="lease")
    assert {v.version: v.state for v in fresh.list_versions()} == {v1: "candidate", v2: "awaiting_approval"}
    monkeypatch.setattr(stalled._coordinator, "create", real_create)
    stalled.transition(v1, "awaiting_approval", "a", "retried")  # the retry goes through
    assert Registry(root, cache_dir=tmp_path / "cache-d", coordination="lease").state(v1) == "awaiting_approval"
