"""The model registry: versioned, checksummed model folders on any fsspec filesystem.

Layout under the root (a local folder, or ``s3://…`` and other fsspec URLs)::

    versions/v7/            one immutable folder per version
        MANIFEST.json       sha256 of every other file; written last, so its presence means "complete"
        card.json           the model card (tuneloop.registry.card.ModelCard)
        labels.json         label names, index = class id
        onnx/…  tokenizer/…  pytorch/…  reference.npz
    versions/.tmp-<uuid>/   a version being written: invisible to readers
    state/v7.json           the version's life-cycle state (mutable, so outside the version folder)
    production.json         the production pointer and the versions it replaced
    audit/<time>-<id>.json  one file per transition: who, when, why (append-only on object stores too)

Writers stage a version under ``.tmp-*`` and rename it into place; on local disks the rename is atomic,
elsewhere the manifest written last plays that role. Readers verify every checksum before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from tuneloop.registry.card import ModelCard, utc_now
from tuneloop.registry.errors import (
    CorruptVersionError,
    IllegalTransitionError,
    NoProductionVersionError,
    NothingToRollBackToError,
    RegistryError,
    VersionNotFoundError,
)
from tuneloop.registry.lifecycle import State, allowed_targets, is_allowed

MANIFEST = "MANIFEST.json"
CARD = "card.json"
LABELS = "labels.json"
REFERENCE = "reference.npz"
_VERSION_RE = re.compile(r"^v(\d+)$")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VersionSummary:
    version: str
    model_name: str
    state: str
    created_at: str
    parent_version: str | None
    strategy: str
    metrics: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AuditEntry:
    at: str
    version: str
    from_state: str | None
    to_state: str
    actor: str
    reason: str


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


class Registry:
    def __init__(self, root: str | Path, cache_dir: str | Path | None = None) -> None:
        self.root_url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.root = os.path.abspath(self.root)
        # Remote versions are downloaded here (once; the manifest check tells a stale copy).
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "tuneloop-registry-cache")
        self.fs.makedirs(self._p("versions"), exist_ok=True)
        self.fs.makedirs(self._p("state"), exist_ok=True)
        self.fs.makedirs(self._p("audit"), exist_ok=True)

    # ---------------------------------------------------------------- paths and small files
    def _p(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _read_json(self, path: str) -> Any:
        with self.fs.open(path, "r") as handle:
            return json.load(handle)

    def _write_json_atomic(self, path: str, data: Any) -> None:
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
        if self.is_local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        else:  # object stores replace whole objects atomically on put
            with self.fs.open(path, "w") as handle:
                handle.write(text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers. Local roots use flock; object stores assume one writer (the adapter)."""
        if not self.is_local:
            yield
            return
        with open(self._p(".lock"), "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- listing
    def _version_names(self) -> list[str]:
        names = []
        for entry in self.fs.ls(self._p("versions"), detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if _VERSION_RE.match(name) and self.fs.exists(self._p("versions", name, MANIFEST)):
                names.append(name)
        return sorted(names, key=lambda n: int(n[1:]))

    def exists(self, version: str) -> bool:
        return self.fs.exists(self._p("versions", version, MANIFEST))

    def _require(self, version: str) -> None:
        if not _VERSION_RE.match(version) or not self.exists(version):
            raise VersionNotFoundError(version, self.root_url)

    def card(self, version: str) -> ModelCard:
        self._require(version)
        return ModelCard.model_validate(self._read_json(self._p("versions", version, CARD)))

    def state(self, version: str) -> State:
        self._require(version)
        return State(self._read_json(self._p("state", f"{version}.json"))["state"])

    def list_versions(self) -> list[VersionSummary]:
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
                    state=self.state(name).value,
                    created_at=card.created_at.isoformat(),
                    parent_version=card.parent_version,
                    strategy=card.strategy,
                    metrics=metrics,
                )
            )
        return summaries

    def production(self) -> str | None:
        path = self._p("production.json")
        if not self.fs.exists(path):
            return None
        return self._read_json(path).get("version")

    def production_history(self) -> list[str]:
        """Versions that were in production before the current one, most recent first."""
        path = self._p("production.json")
        return self._read_json(path).get("previous", []) if self.fs.exists(path) else []

    def audit_log(self, version: str | None = None) -> list[AuditEntry]:
        entries = []
        for path in sorted(self.fs.ls(self._p("audit"), detail=False)):
            if not path.endswith(".json"):
                continue
            entry = AuditEntry(**self._read_json(path))
            if version is None or entry.version == version:
                entries.append(entry)
        return entries

    # ---------------------------------------------------------------- writing a version
    def publish(self, staging_dir: str | Path, card: ModelCard, actor: str, reason: str = "registered") -> str:
        """Copy a staged model folder into the registry as a new version in state ``candidate``."""
        staging = Path(staging_dir)
        if not (staging / LABELS).is_file():
            raise RegistryError(f"staging folder {staging} has no {LABELS}")
        with self._locked():
            names = self._version_names()
            number = int(names[-1][1:]) + 1 if names else 1
            while True:  # another writer on an object store may have taken the number
                version = f"v{number}"
                if not self.fs.exists(self._p("versions", version)):
                    break
                number += 1
            card = card.model_copy(update={"version": version})
            (staging / CARD).write_text(card.model_dump_json(indent=2))
            tmp = self._p("versions", f".tmp-{uuid.uuid4().hex}")
            self._upload_with_manifest(staging, tmp, version)
            final = self._p("versions", version)
            if self.is_local:
                os.rename(tmp, final)  # atomic: the version appears whole or not at all
            else:
                self.fs.mv(tmp, final, recursive=True)
                self._write_json_atomic(
                    self._p("versions", version, MANIFEST),
                    self._read_json(self._p("versions", version, f"{MANIFEST}.staged")),
                )
                self.fs.rm(self._p("versions", version, f"{MANIFEST}.staged"))
            self._write_json_atomic(self._p("state", f"{version}.json"), {"state": State.CANDIDATE.value})
            self._append_audit(version, None, State.CANDIDATE, actor, reason)
        return version

    def _upload_with_manifest(self, staging: Path, target: str, version: str) -> None:
        files: dict[str, str] = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = path.relative_to(staging).as_posix()
            if rel == MANIFEST:
                continue
            files[rel] = sha256_file(path)
            dest = f"{target}/{rel}"
            self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            if self.is_local:
                shutil.copyfile(path, dest)
            else:
                self.fs.put_file(str(path), dest)
        manifest = {"version": version, "created_at": utc_now().isoformat(), "files": files}
        # On a local disk the folder rename is the commit point, so the manifest can go in now;
        # elsewhere it is written under another name and moved into place after the copy.
        name = MANIFEST if self.is_local else f"{MANIFEST}.staged"
        if self.is_local:
            self._write_json_atomic(f"{target}/{name}", manifest)
            _fsync_tree(Path(target))
        else:
            with self.fs.open(f"{target}/{name}", "w") as handle:
                json.dump(manifest, handle, indent=2)

    # ---------------------------------------------------------------- reading a version
    def open_version(self, version: str, verify: bool = True) -> ModelVersion:
        """Return a local, checksum-verified copy of a version (the folder itself on local roots)."""
        self._require(version)
        remote_dir = self._p("versions", version)
        manifest = self._read_json(f"{remote_dir}/{MANIFEST}")
        if self.is_local:
            local = Path(remote_dir)
        else:
            local = self.cache_dir / _safe_cache_name(self.root_url) / version
            if not _matches_manifest(local, manifest["files"]):
                if local.exists():
                    shutil.rmtree(local)
                self.fs.get(remote_dir, str(local), recursive=True)
        if verify:
            verify_files(local, manifest["files"], version)
        card = ModelCard.model_validate_json((local / CARD).read_text())
        labels = json.loads((local / LABELS).read_text())["labels"]
        return ModelVersion(version, local, card, labels)

    def verify(self, version: str) -> None:
        self.open_version(version, verify=True)

    # ---------------------------------------------------------------- life cycle
    def transition(self, version: str, target: State | str, actor: str, reason: str) -> State:
        target = State(target)
        if target in (State.PRODUCTION, State.RETIRED, State.ROLLED_BACK):
            # These move the production pointer too; only promote() and rollback() may set them.
            raise RegistryError(f"use promote or rollback to move a version to {target.value!r}")
        with self._locked():
            return self._transition_unlocked(version, target, actor, reason)

    def _transition_unlocked(self, version: str, target: State, actor: str, reason: str) -> State:
        current = self.state(version)
        if not is_allowed(current, target):
            raise IllegalTransitionError(version, current, target, allowed_targets(current))
        self._write_json_atomic(self._p("state", f"{version}.json"), {"state": target.value})
        self._append_audit(version, current, target, actor, reason)
        return target

    def promote(self, version: str, actor: str, reason: str) -> str | None:
        """Make an approved version the production one; the one it replaces is retired.

        Returns the version that was replaced, if any.
        """
        with self._locked():
            current = self.state(version)
            if current != State.APPROVED:
                raise IllegalTransitionError(version, current, State.PRODUCTION, allowed_targets(current))
            self.open_version(version, verify=True)  # never point production at a corrupt version
            previous = self.production()
            history = self.production_history()
            if previous is not None:
                self._transition_unlocked(previous, State.RETIRED, actor, f"replaced by {version}: {reason}")
                history = [previous, *history]
            self._transition_unlocked(version, State.PRODUCTION, actor, reason)
            self._set_production(version, history, actor, reason)
            return previous

    def rollback(self, actor: str, reason: str) -> tuple[str, str]:
        """Pull the production version and reinstate the one it replaced. Returns (pulled, restored)."""
        with self._locked():
            current = self.production()
            if current is None:
                raise NoProductionVersionError("no version is in production, so there is nothing to roll back")
            history = self.production_history()
            restorable = [v for v in history if self.state(v) == State.RETIRED]
            if not restorable:
                raise NothingToRollBackToError(
                    f"{current} is the only version that has been in production; nothing to roll back to"
                )
            target = restorable[0]
            self.open_version(target, verify=True)
            self._transition_unlocked(current, State.ROLLED_BACK, actor, reason)
            self._transition_unlocked(target, State.PRODUCTION, actor, f"rollback of {current}: {reason}")
            remaining = [v for v in history if v != target]
            self._set_production(target, remaining, actor, reason)
            return current, target

    def _set_production(self, version: str, history: list[str], actor: str, reason: str) -> None:
        self._write_json_atomic(
            self._p("production.json"),
            {"version": version, "previous": history, "updated_at": utc_now().isoformat(),
             "actor": actor, "reason": reason},
        )

    def _append_audit(self, version: str, source: State | None, target: State, actor: str, reason: str) -> None:
        now = utc_now()
        name = f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{uuid.uuid4().hex[:8]}.json"
        entry = AuditEntry(
            at=now.isoformat(), version=version, from_state=source.value if source else None,
            to_state=target.value, actor=actor, reason=reason,
        )
        self._write_json_atomic(self._p("audit", name), entry.__dict__)


def verify_files(folder: Path, files: dict[str, str], version: str) -> None:
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            raise CorruptVersionError(f"version {version} is incomplete: {rel} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CorruptVersionError(
                f"version {version} is corrupt: {rel} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…"
            )


def _matches_manifest(folder: Path, files: dict[str, str]) -> bool:
    return folder.is_dir() and all((folder / rel).is_file() for rel in files)


def _safe_cache_name(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())

