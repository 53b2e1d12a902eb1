"""A crash at any step of publish, promote or rollback leaves the registry readable, the operation done or not
done (never half), and a retry completes it: on a local disk, and on an object store with conditional writes
and with the lease.

Each test runs the operation once to count its steps (every write to storage, crashes.py), then, for every
step k, copies the registry as it was before, runs the operation in a forked child that is SIGKILLed right
after its k-th step, and checks what the child left: the registry opens, lists, verifies every version, has
exactly one version in production where it had one, shows either the old or the new state; then the
operation is retried, completes, and has left exactly one audit entry per transition.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.registry.crashes import run_forked, steps_of
from tests.registry.versions import approve, make_card, make_staging
from tuneloop.registry import Registry

Listing = dict[str, str]
Snapshot = tuple[Listing, str | None, list[str]]  # states, production, production history


@dataclass(frozen=True)
class Backend:
    scheme: str  # "" for a local folder
    coordination: str = "auto"

    def open(self, folder: Path) -> Registry:
        root = f"{self.scheme}://{folder / 'reg'}" if self.scheme else str(folder / "reg")
        options = {} if self.coordination == "auto" else {"coordination": self.coordination}
        return Registry(root, cache_dir=folder / "cache", **options)


BACKENDS = {
    "local": Backend(""),
    "objstore-conditional": Backend("objdir", "conditional"),
    "objstore-lease": Backend("objdir", "lease"),
}


def snapshot(reg: Registry) -> Snapshot:
    return {s.version: s.state for s in reg.list_versions()}, reg.production(), reg.production_history()


def transitions(reg: Registry) -> Counter[tuple[str, str | None, str]]:
    return Counter((e.version, e.from_state, e.to_state) for e in reg.audit_log())


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[Registry, Path], None]
    operation: Callable[[Registry, Path], object]
    before: Snapshot
    after: Snapshot
    retry: Callable[[Registry, Path, Snapshot], None]  # retries the operation and checks its outcome


# ---------------------------------------------------------------- publish
def setup_publish(reg: Registry, folder: Path) -> None:
    reg.publish(make_staging(folder / "stage-v1"), make_card(), actor="setup")
    make_staging(folder / "stage-op")
    make_staging(folder / "stage-retry")


def retry_publish(reg: Registry, folder: Path, crashed: Snapshot) -> None:
    version = reg.publish(folder / "stage-retry", make_card(), actor="retry")
    listed, production, _ = snapshot(reg)
    # Publishing is not idempotent: a publish that had completed before the crash leaves its version too.
    assert listed == {**crashed[0], version: "candidate"} and production is None
    assert version not in crashed[0]
    counts = transitions(reg)
    assert all(counts[(v, None, "candidate")] == 1 for v in listed), counts


# ---------------------------------------------------------------- promote
def setup_promote(reg: Registry, folder: Path) -> None:
    for tag in ("v1", "v2"):
        approve(reg, reg.publish(make_staging(folder / f"stage-{tag}"), make_card(), actor="setup"))
    reg.promote("v1", "setup", "first")


def retry_promote(reg: Registry, folder: Path, crashed: Snapshot) -> None:
    assert reg.promote("v2", "retry", "promote again") == "v1"
    assert snapshot(reg) == PROMOTE.after
    counts = transitions(reg)
    assert counts[("v1", "production", "retired")] == 1, counts
    assert counts[("v2", "approved", "production")] == 1, counts


# ---------------------------------------------------------------- rollback
def setup_rollback(reg: Registry, folder: Path) -> None:
    setup_promote(reg, folder)
    reg.promote("v2", "setup", "second")


def retry_rollback(reg: Registry, folder: Path, crashed: Snapshot) -> None:
    assert reg.rollback("retry", "roll back again", expect="v2") == ("v2", "v1")
    assert snapshot(reg) == ROLLBACK.after
    counts = transitions(reg)
    assert counts[("v2", "production", "rolled_back")] == 1, counts
    assert counts[("v1", "retired", "production")] == 1, counts


PUBLISH = Scenario(
    setup_publish,
    lambda reg, folder: reg.publish(folder / "stage-op", make_card(), actor="op"),
    before=({"v1": "candidate"}, None, []),
    after=({"v1": "candidate", "v2": "candidate"}, None, []),
    retry=retry_publish,
)
PROMOTE = Scenario(
    setup_promote,
    lambda reg, folder: reg.promote("v2", "op", "promote under test"),
    before=({"v1": "production", "v2": "approved"}, "v1", []),
    after=({"v1": "retired", "v2": "production"}, "v2", ["v1"]),
    retry=retry_promote,
)
ROLLBACK = Scenario(
    setup_rollback,
    lambda reg, folder: reg.rollback("op", "rollback under test", expect="v2"),
    before=({"v1": "retired", "v2": "production"}, "v2", ["v1"]),
    after=({"v1": "production", "v2": "rolled_back"}, "v1", []),
    retry=retry_rollback,
)
SCENARIOS = {"publish": PUBLISH, "promote": PROMOTE, "rollback": ROLLBACK}


@pytest.fixture
def quick_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no other publisher about, a version whose publisher died is recorded at once rather than after
    the 10 minutes an object store waits for a publish that might still be running (test_recovery.py
    checks that wait)."""
    import tuneloop.registry.store as store

    monkeypatch.setattr(store, "REMOTE_ADOPT_AFTER_S", 0.0)


def let_leases_expire(folder: Path) -> None:
    """What waiting out a killed child's lease does, without the wait (test_concurrent_writers.py waits)."""
    lease = folder / "reg" / ".lease"
    if lease.exists():
        lease.write_text(json.dumps({**json.loads(lease.read_text()), "expires_at": 0}))


def check_crashed(backend: Backend, scenario: Scenario, folder: Path) -> None:
    let_leases_expire(folder)
    reg = backend.open(folder)
    crashed = snapshot(reg)
    for version in crashed[0]:
        reg.verify(version)
    live = [v for v, state in crashed[0].items() if state == "production"]
    assert live == ([crashed[1]] if crashed[1] else []), f"pointer {crashed[1]}, states {crashed[0]}"
    assert crashed in (scenario.before, scenario.after), f"half done: {crashed}"
    scenario.retry(reg, folder, crashed)
    for version in snapshot(reg)[0]:
        reg.verify(version)


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
@pytest.mark.parametrize("backend_name", list(BACKENDS))
def test_crash_at_every_step(
    backend_name: str, scenario_name: str, tmp_path: Path, quick_timeouts: None
) -> None:
    backend, scenario = BACKENDS[backend_name], SCENARIOS[scenario_name]
    template = tmp_path / "template"
    scenario.setup(backend.open(template), template)
    assert snapshot(backend.open(template)) == scenario.before

    def fresh(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(template, folder, symlinks=True)
        return folder

    traced = fresh("traced")
    steps = steps_of(lambda: scenario.operation(backend.open(traced), traced), tmp_path / "trace.txt")
    assert snapshot(backend.open(traced)) == scenario.after
    assert steps, "the operation wrote nothing"

    failures = []
    for k, step in enumerate(steps, start=1):
        folder = fresh(f"crash-{k}")
        code = run_forked(lambda f=folder: scenario.operation(backend.open(f), f), kill_at=k)
        try:
            assert code == -signal.SIGKILL, f"the child was not killed (exit {code})"
            check_crashed(backend, scenario, folder)
        except Exception as exc:  # noqa: BLE001 - every broken step is reported, not just the first
            failures.append(f"after step {k}/{len(steps)} ({step}): {type(exc).__name__}: {exc}")
        shutil.rmtree(folder, ignore_errors=True)
    summary = f"{len(failures)} of {len(steps)} crash points broke the registry:\n"
    assert not failures, summary + "\n".join(failures)
