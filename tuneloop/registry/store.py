"""The model registry: versioned, checksummed model folders on any fsspec filesystem.

Layout under the root (a local folder, or ``s3://…`` and other fsspec URLs)::

    versions/v7/              one immutable folder per version
        MANIFEST.json         sha256 of every other file; written last, so its presence means "complete"
        card.json             the model card (tuneloop.registry.card.ModelCard)
        labels.json           label names, index = class id
        onnx/…  tokenizer/…  pytorch/…  reference.npz
        .claim                (object stores) the exclusive create that took the number 7
    versions/.tmp-<uuid>/     (local disk) a version being written: invisible to readers
    commits/000000000042.json the state, revision 42: every version's life-cycle state, the production pointer
                              and the versions it replaced, the audit entries of that change (journal.py)
    audit/<time>-r<rev>-<n>.json  one file per transition, written out from the commits
    production.json           copies of the state for readers older than commits/ (written after each commit,
    state/v7.json             never read by this code once commits/ exists)

Commit points. A version's files become visible at once: on a local disk the staged folder, manifest
included, is renamed into place; on an object store the manifest is the last object written. Its
registration as a ``candidate`` and every later change of state is then one state commit (journal.py),
so a crash at any step leaves the registry readable and the operation either done or not done; a version
whose registration was lost reads as ``candidate``, and the next publish records it as such.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from tuneloop.registry.cache import RemoteCache, newest_mtime
from tuneloop.registry.card import ModelCard, utc_now
from tuneloop.registry.checksums import sha256_file, verify_files
from tuneloop.registry.coordination import LocalCoordinator, Mode, ObjectStoreCoordinator, fsync_dir
from tuneloop.registry.errors import (
    IllegalTransitionError,
    NoProductionVersionError,
    NothingToRollBackToError,
    RegistryBusyError,
    RegistryError,
    VersionNotFoundError,
)
from tuneloop.registry.journal import COMMITS, AuditEntry, Journal, ProductionPointer, StateDocument
from tuneloop.registry.lifecycle import State, allowed_targets, is_allowed

__all__ = ["AuditEntry", "ModelVersion", "Registry", "VersionSummary", "sha256_file", "verify_files"]

MANIFEST = "MANIFEST.json"
CARD = "card.json"
LABELS = "labels.json"
REFERENCE = "reference.npz"
CLAIM = ".claim"
_VERSION_RE = re.compile(r"^v(\d+)$")
# Temporary names: this code's ``.tmp-<uuid>`` and the older ``<name>.json.tmp-<uuid>``.
_TEMP_RE = re.compile(r"(^\.tmp-|\.tmp-[0-9a-f]{32}$)")

MAX_COMMIT_ATTEMPTS = 50
# Local staging only ever happens under the writer's flock, so anything found there belonged to a dead
# process; the age only guards against mounts whose flock does nothing.
LOCAL_STALE_AFTER_S = 3600.0
# On object stores an upload runs without any lock, and a slow one must not lose its files.
REMOTE_STALE_AFTER_S = 24 * 3600.0
# On an object store, a complete version without a commit may be a publish between manifest and commit.
REMOTE_ADOPT_AFTER_S = 600.0
ADOPTED = "adopted: its files are complete but the writer died before registering it"


@dataclass(frozen=True)
class VersionSummary:
    version: str
    model_name: str
    state: str
    created_at: str
    parent_version: str | None
    strategy: str
    metrics: dict[str, float]
    gates_passed: bool | None = None  # None: not judged by the adapter's gates

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelVersion:
    """A verified, locally readable version: the files the service and the adapter load."""

    def __init__(self, version: str, path: Path, card: ModelCard, labels: list[str]) -> None:
        self.version = version
        self.path = path
        self.card = card
        self.labels = labels

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def pytorch_dir(self) -> Path:
        return self.path / "pytorch"

    def onnx_path(self, precision: str = "fp32") -> Path:
        if precision not in self.card.onnx_files:
            have = ", ".join(sorted(self.card.onnx_files)) or "none"
            raise RegistryError(f"version {self.version} has no {precision} ONNX graph (it has: {have})")
        return self.path / self.card.onnx_files[precision]

    def reference(self) -> dict[str, np.ndarray]:
        """The reference sample kept for drift detection (validation-set embeddings and predictions)."""
        with np.load(self.path / REFERENCE, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def dataset(self, name: str) -> list[tuple[str, str]]:
        """(text, label name) rows of a split or test set the version kept (``card.datasets``): its training
        data for replay, its test sets for the gates of its successors."""
        if name not in self.card.datasets:
            have = ", ".join(sorted(self.card.datasets)) or "none"
            raise RegistryError(f"version {self.version} kept no dataset {name!r} (it kept: {have})")
        with open(self.path / self.card.datasets[name], encoding="utf-8") as handle:
            return [(row["text"], row["label"]) for row in map(json.loads, handle)]


# Given the newest state and the commit time, the next state (revision and time are filled in), or None
# when there is nothing to change.
Decision = Callable[[StateDocument, str], "StateDocument | None"]


def _entry(at: str, version: str, source: State | None, target: State, actor: str, reason: str) -> AuditEntry:
    return AuditEntry(at=at, version=version, from_state=source.value if source else None,
                      to_state=target.value, actor=actor, reason=reason)


class Registry:
    def __init__(
        self, root: str | Path, cache_dir: str | Path | None = None, *, coordination: Mode = "auto"
    ) -> None:
        """``coordination``: how concurrent writers on an object store are kept apart. ``auto`` uses the
        store's conditional writes where the fsspec backend sends them (s3fs, gcsfs) and a lease elsewhere;
        ``conditional`` trusts any backend's ``pipe_file(mode="create")``; ``lease`` forces the lease.
        Local folders always use flock."""
        self.root_url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.root = os.path.abspath(self.root)
        # Remote versions are downloaded here, checked against their manifest, shared by processes.
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "tuneloop-registry-cache")
        self._cache = RemoteCache(self.cache_dir, self.root_url)
        folders = [self._p(name) for name in ("versions", "state", "audit", COMMITS)]
        missing = [folder for folder in folders if self.is_local and not os.path.isdir(folder)]
        for folder in folders:
            self.fs.makedirs(folder, exist_ok=True)
        if missing:  # new folders' names must survive a power cut as much as what goes into them
            fsync_dir(self.root)
            fsync_dir(os.path.dirname(self.root))
        self._coordinator = (
            LocalCoordinator(self.root) if self.is_local
            else ObjectStoreCoordinator(self.fs, self.root, coordination)
        )
        self._journal = Journal(self.fs, self.root, self._coordinator, self.is_local)
        # Told the audit entries of every change this process commits (the CLI and the adapter publish them on
        # tuneloop.model-events); must not raise, and a slow one slows every change.
        self.listeners: list[Callable[[list[AuditEntry]], None]] = []

    # ---------------------------------------------------------------- paths and listing
    def _p(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _entries(self, folder: str) -> list[str]:
        self.fs.invalidate_cache(folder)  # other writers' objects must show up
        try:
            return [path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    def _version_names(self) -> list[str]:
        names = [
            name for name in self._entries(self._p("versions"))
            if _VERSION_RE.match(name) and self.fs.exists(self._p("versions", name, MANIFEST))
        ]
        return sorted(names, key=lambda n: int(n[1:]))

    def exists(self, version: str) -> bool:
        return self.fs.exists(self._p("versions", version, MANIFEST))

    def _require(self, version: str) -> None:
        if not _VERSION_RE.match(version) or not self.exists(version):
            raise VersionNotFoundError(version, self.root_url)

    def _state(self) -> StateDocument:
        return self._journal.head().document

    # ---------------------------------------------------------------- reading
    def card(self, version: str) -> ModelCard:
        self._require(version)
        return ModelCard.model_validate_json(self.fs.cat_file(self._p("versions", version, CARD)))

    def state(self, version: str) -> State:
        self._require(version)
        return self._state().state_of(version)

    def list_versions(self) -> list[VersionSummary]:
        document = self._state()
        summaries = []
        for name in self._version_names():
            card = self.card(name)
            test_name = next(iter(card.metrics), None)
            metrics = {}
            if test_name:
                m = card.metrics[test_name]
                metrics = {"accuracy": m.accuracy, "f1_macro": m.f1_macro, "ece": m.ece}
            summaries.append(
                VersionSummary(
                    version=name,
                    model_name=card.model_name,
                    state=document.state_of(name).value,
                    created_at=card.created_at.isoformat(),
                    parent_version=card.parent_version,
                    strategy=card.strategy,
                    metrics=metrics,
                    gates_passed=card.gates.passed if card.gates else None,
                )
            )
        return summaries

    def production(self) -> str | None:
        pointer = self._state().production
        return pointer.version if pointer else None

    def production_history(self) -> list[str]:
        """Versions that were in production before the current one, most recent first."""
        pointer = self._state().production
        return list(pointer.previous) if pointer else []

    def audit_log(self, version: str | None = None) -> list[AuditEntry]:
        return [e for e in self._journal.audit_entries() if version is None or e.version == version]

    def open_version(self, version: str, verify: bool = True) -> ModelVersion:
        """Return a local, checksum-verified copy of a version (the folder itself on local roots)."""
        self._require(version)
        remote_dir = self._p("versions", version)
        manifest = json.loads(self.fs.cat_file(f"{remote_dir}/{MANIFEST}"))
        if self.is_local:
            local = Path(remote_dir)
            if verify:
                verify_files(local, manifest["files"], version)
        else:
            local = self._cache.fetch(self.fs, remote_dir, version, manifest, verify)
        card = ModelCard.model_validate_json((local / CARD).read_text())
        labels = json.loads((local / LABELS).read_text())["labels"]
        return ModelVersion(version, local, card, labels)

    def verify(self, version: str) -> None:
        self.open_version(version, verify=True)

    # ---------------------------------------------------------------- changing the state
    def _commit(self, decide: Decision) -> StateDocument:
        """Read the newest state, decide, commit the next revision; again from the top if another writer
        committed that revision first. Returns the state now in force."""
        with self._coordinator.writer():
            for attempt in range(MAX_COMMIT_ATTEMPTS):
                head = self._journal.head()
                self._journal.materialize(head.document)  # finish what a writer killed after its commit left
                now = utc_now().isoformat()
                following = decide(head.document, now)
                if following is None:
                    return head.document
                following = following.model_copy(update={"revision": head.next_revision, "committed_at": now})
                try:
                    self._journal.commit(following)
                except FileExistsError:
                    time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                    continue
                self._journal.materialize(following)
                self._journal.prune(following)
                for listener in self.listeners:
                    listener(list(following.audit))
                return following
        raise RegistryBusyError(
            f"gave up after {MAX_COMMIT_ATTEMPTS} attempts: other writers kept changing {self.root_url} first"
        )

    def transition(self, version: str, target: State | str, actor: str, reason: str) -> State:
        target = State(target)
        if target in (State.PRODUCTION, State.RETIRED, State.ROLLED_BACK):
            # These move the production pointer too; only promote() and rollback() may set them.
            raise RegistryError(f"use promote or rollback to move a version to {target.value!r}")
        self._require(version)

        def decide(document: StateDocument, now: str) -> StateDocument:
            current = document.state_of(version)
            if not is_allowed(current, target):
                raise IllegalTransitionError(version, current, target, allowed_targets(current))
            return document.model_copy(update={
                "versions": {**document.versions, version: target},
                "audit": [_entry(now, version, current, target, actor, reason)],
            })

        self._commit(decide)
        return target

    def promote(self, version: str, actor: str, reason: str) -> str | None:
        """Make an approved version the production one; the one it replaces is retired.

        Returns the version that was replaced, if any. Promoting the version already in production changes
        nothing and returns what its promotion replaced, so a promotion interrupted by a crash can be retried.
        """
        self._require(version)
        verified: set[str] = set()

        def verify_once() -> None:
            if version not in verified:
                self.open_version(version, verify=True)  # never point production at a corrupt version
                verified.add(version)

        def decide(document: StateDocument, now: str) -> StateDocument | None:
            pointer = document.production
            if pointer is not None and pointer.version == version:
                return None
            current = document.state_of(version)
            if current != State.APPROVED:
                raise IllegalTransitionError(version, current, State.PRODUCTION, allowed_targets(current))
            verify_once()
            states = {**document.versions, version: State.PRODUCTION}
            audit = []
            history: list[str] = []
            if pointer is not None:
                states[pointer.version] = State.RETIRED
                audit.append(_entry(now, pointer.version, document.state_of(pointer.version), State.RETIRED,
                                    actor, f"replaced by {version}: {reason}"))
                history = [pointer.version, *pointer.previous]
            audit.append(_entry(now, version, current, State.PRODUCTION, actor, reason))
            moved = ProductionPointer(version=version, previous=history,
                                      replaced=pointer.version if pointer else None,
                                      updated_at=now, actor=actor, reason=reason)
            return document.model_copy(update={"versions": states, "production": moved, "audit": audit})

        # Verified before the writer's lock or lease is taken: a remote version is downloaded first.
        before = self._state()
        in_production = before.production is not None and before.production.version == version
        if not in_production and before.state_of(version) == State.APPROVED:
            verify_once()
        after = self._commit(decide)
        assert after.production is not None
        return after.production.replaced

    def rollback(self, actor: str, reason: str, *, expect: str | None = None) -> tuple[str, str]:
        """Pull the production version and reinstate the one it replaced. Returns (pulled, restored).

        ``expect`` names the version to pull: if it is not in production the call refuses, unless that
        version was already pulled by the rollback now in force, which it then returns unchanged: a rollback
        interrupted by a crash can be retried without rolling back twice.
        """
        verified: set[str] = set()
        outcome: list[tuple[str, str]] = []

        def plan(document: StateDocument) -> tuple[str, str] | None:
            pointer = document.production
            if expect is not None and (pointer is None or pointer.version != expect):
                pulled = document.state_of(expect) == State.ROLLED_BACK
                if pointer is not None and pointer.replaced == expect and pulled:
                    outcome[:] = [(expect, pointer.version)]
                    return None
                serving = pointer.version if pointer else "no version"
                raise RegistryError(f"{expect} is not in production ({serving} is); nothing was rolled back")
            if pointer is None:
                raise NoProductionVersionError(
                    "no version is in production, so there is nothing to roll back"
                )
            restorable = [v for v in pointer.previous if document.state_of(v) == State.RETIRED]
            if not restorable:
                raise NothingToRollBackToError(
                    f"{pointer.version} is the only version that has been in production; "
                    "nothing to roll back to"
                )
            return pointer.version, restorable[0]

        def verify_once(target: str) -> None:
            if target not in verified:
                self.open_version(target, verify=True)
                verified.add(target)

        def decide(document: StateDocument, now: str) -> StateDocument | None:
            planned = plan(document)
            if planned is None:
                return None
            pulled, target = planned
            verify_once(target)
            pointer = document.production
            assert pointer is not None
            states = {**document.versions, pulled: State.ROLLED_BACK, target: State.PRODUCTION}
            audit = [
                _entry(now, pulled, document.state_of(pulled), State.ROLLED_BACK, actor, reason),
                _entry(now, target, document.state_of(target), State.PRODUCTION, actor,
                       f"rollback of {pulled}: {reason}"),
            ]
            moved = ProductionPointer(version=target, previous=[v for v in pointer.previous if v != target],
                                      replaced=pulled, updated_at=now, actor=actor, reason=reason)
            outcome[:] = [(pulled, target)]
            return document.model_copy(update={"versions": states, "production": moved, "audit": audit})

        planned = plan(self._state())  # errors early, and the download before the lock
        if planned is not None:
            verify_once(planned[1])
        self._commit(decide)
        return outcome[0]

    # ---------------------------------------------------------------- writing a version
    def publish(self, staging_dir: str | Path, card: ModelCard, actor: str, reason: str = "registered") -> str:
        """Copy a staged model folder into the registry as a new version in state ``candidate``."""
        staging = Path(staging_dir)
        if not (staging / LABELS).is_file():
            raise RegistryError(f"staging folder {staging} has no {LABELS}")
        if self.is_local:
            # The whole publish holds the flock: the number is taken when the folder is renamed into place.
            with self._coordinator.writer():
                self._clean_stale_local()
                version = f"v{self._next_number(self._state())}"
                self._write_card(staging, card, version)
                tmp = self._p("versions", f".tmp-{uuid.uuid4().hex}")
                self._copy_with_manifest(staging, tmp, version)
                # Atomic: the version appears whole or not at all.
                os.rename(tmp, self._p("versions", version))
                fsync_dir(self._p("versions"))
                self._register(version, actor, reason)
        else:
            # No rename on object stores: the number is claimed first, the files go straight to their place,
            # the manifest last. The upload holds no lock or lease; it may take a while.
            version = self._claim_version()
            self._write_card(staging, card, version)
            self._copy_with_manifest(staging, self._p("versions", version), version)
            self._register(version, actor, reason)
        return version

    def _next_number(self, document: StateDocument) -> int:
        taken = [int(m.group(1)) for name in [*self._entries(self._p("versions")), *document.versions]
                 if (m := _VERSION_RE.match(name))]
        return max(taken, default=0) + 1

    def _claim_version(self) -> str:
        with self._coordinator.writer():
            self._clean_stale_remote()
            number = self._next_number(self._state())
            claim = json.dumps({"claimed_at": utc_now().isoformat(), "host": socket.gethostname(),
                                "pid": os.getpid()}).encode()
            while True:
                version = f"v{number}"
                self.fs.makedirs(self._p("versions", version), exist_ok=True)
                try:
                    self._coordinator.create(self._p("versions", version, CLAIM), claim)
                except FileExistsError:
                    number += 1  # another publisher took it between our listing and our claim
                    continue
                return version

    def _write_card(self, staging: Path, card: ModelCard, version: str) -> None:
        (staging / CARD).write_text(card.model_copy(update={"version": version}).model_dump_json(indent=2))

    def _copy_with_manifest(self, staging: Path, target: str, version: str) -> None:
        files: dict[str, str] = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = path.relative_to(staging).as_posix()
            if rel in (MANIFEST, CLAIM):
                continue
            files[rel] = sha256_file(path)
            dest = f"{target}/{rel}"
            if self.is_local:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(path, dest)
            else:
                self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), dest)
        manifest = json.dumps({"version": version, "created_at": utc_now().isoformat(), "files": files},
                              indent=2)
        if self.is_local:  # the folder is invisible until renamed, so the manifest can go in directly
            Path(target, MANIFEST).write_text(manifest)
            _fsync_tree(Path(target))
        else:  # written last: its presence means the version is complete
            self.fs.pipe_file(f"{target}/{MANIFEST}", manifest.encode())

    def _register(self, version: str, actor: str, reason: str) -> None:
        orphans = self._orphans(version)

        def decide(document: StateDocument, now: str) -> StateDocument | None:
            if version in document.versions:
                return None  # adopted by a concurrent publish already
            states = dict(document.versions)
            audit = []
            for orphan in orphans:
                if orphan not in states:
                    states[orphan] = State.CANDIDATE
                    audit.append(_entry(now, orphan, None, State.CANDIDATE, "registry", ADOPTED))
            states[version] = State.CANDIDATE
            audit.append(_entry(now, version, None, State.CANDIDATE, actor, reason))
            return document.model_copy(update={"versions": states, "audit": audit})

        self._commit(decide)

    def _orphans(self, publishing: str) -> list[str]:
        """Complete versions that no commit registered: their writer died between the files and the commit."""
        known = self._state().versions
        orphans = [name for name in self._version_names() if name != publishing and name not in known]
        if self.is_local:
            return orphans  # under the flock: no other publish is between its files and its commit
        # On an object store another publisher may be in that gap right now; give it time.
        return [name for name in orphans if self._manifest_age_s(name) >= REMOTE_ADOPT_AFTER_S]

    def _manifest_age_s(self, version: str) -> float:
        try:
            created = json.loads(self.fs.cat_file(self._p("versions", version, MANIFEST)))["created_at"]
            return (utc_now() - datetime.fromisoformat(created)).total_seconds()
        except (FileNotFoundError, KeyError, ValueError):
            return 0.0

    # ---------------------------------------------------------------- leftovers of crashed writers
    def _clean_stale_local(self) -> None:
        now = time.time()
        for folder in (self.root, *(self._p(name) for name in ("versions", "state", "audit", COMMITS))):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if not _TEMP_RE.search(entry.name):
                        continue
                    path = Path(entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        if now - newest_mtime(path) <= LOCAL_STALE_AFTER_S:
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink()

    def _clean_stale_remote(self) -> None:
        versions = self._p("versions")
        complete = set(self._version_names())
        for name in self._entries(versions):
            folder = self._p("versions", name)
            if name.startswith(".tmp-"):  # staging folders of the layout before claims
                if self._remote_age_s(folder) > REMOTE_STALE_AFTER_S:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm(folder, recursive=True)
            elif (_VERSION_RE.match(name) and name not in complete
                  and self._claim_age_s(name) > REMOTE_STALE_AFTER_S):
                # An upload that died. The claim stays, so that the number is never handed out twice.
                for path in self.fs.find(folder):
                    if not path.endswith(f"/{CLAIM}"):
                        with contextlib.suppress(FileNotFoundError):
                            self.fs.rm_file(path)

    def _claim_age_s(self, version: str) -> float:
        try:
            claimed = json.loads(self.fs.cat_file(self._p("versions", version, CLAIM)))["claimed_at"]
            return (utc_now() - datetime.fromisoformat(claimed)).total_seconds()
        except (FileNotFoundError, KeyError, ValueError):
            return 0.0  # unknown: never old enough to delete

    def _remote_age_s(self, folder: str) -> float:
        newest = 0.0
        try:
            for path in self.fs.find(folder):
                newest = max(newest, self.fs.modified(path).timestamp())
        except (NotImplementedError, FileNotFoundError, AttributeError):
            return 0.0
        return time.time() - newest if newest else 0.0


def _fsync_tree(folder: Path) -> None:
    """Files first, then every folder bottom-up: a rename of the tree must not outlive its contents."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    folders = sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for path in folders:
        fsync_dir(str(path))
    fsync_dir(str(folder))
