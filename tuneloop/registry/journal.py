"""The registry's mutable state: one document, committed whole, one numbered object per revision.

    commits/000000000042.json   revision 42: every version's life-cycle state, the production pointer and
                                the versions it replaced, and the audit entries of the change that made it

A change reads the newest revision N, applies itself and creates revision N+1 with an exclusive create
(coordination.py). So a change is wholly there or not there, and of two concurrent changes one commits while
the other reads again and retries. Nothing else is authoritative.

After its commit a writer *materialises* the revision: the audit entries become files under ``audit/``,
``production.json`` and ``state/vN.json`` are rewritten for readers that predate this layout. Materialising is
idempotent and runs again, for the newest revision, at the start of every change, so whatever a writer killed
after its commit left undone, the next writer finishes; meanwhile ``audit_log`` reads the newest revision's
entries from the commit itself.

A registry written before this layout has no ``commits/``: its state is read from ``state/vN.json`` and
``production.json``, and its first change commits revision 1 holding everything those held.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fsspec import AbstractFileSystem
from pydantic import BaseModel, Field, ValidationError

from tuneloop.registry.coordination import Coordinator, fsync_dir
from tuneloop.registry.errors import CorruptStateError
from tuneloop.registry.lifecycle import State

log = logging.getLogger(__name__)

COMMITS = "commits"
KEEP_COMMITS = 100  # older revisions are deleted; their audit entries live on under audit/
_COMMIT_RE = re.compile(r"^(\d{12})\.json$")
_LEGACY_STATE_RE = re.compile(r"^(v\d+)\.json$")
_POINTER_STATES = (State.PRODUCTION.value, State.RETIRED.value, State.ROLLED_BACK.value)


class AuditEntry(BaseModel):
    """One transition: who, when, why. The audit files hold exactly these keys (older readers expect them)."""

    at: str
    version: str
    from_state: str | None
    to_state: str
    actor: str
    reason: str


class ProductionPointer(BaseModel):
    version: str
    previous: list[str] = Field(default_factory=list, description="versions it replaced, most recent first")
    replaced: str | None = Field(default=None, description="the version this change took out of production")
    updated_at: str = ""
    actor: str = ""
    reason: str = ""


class StateDocument(BaseModel):
    format: int = 1
    revision: int = 0
    committed_at: str = ""
    versions: dict[str, State] = Field(default_factory=dict)
    production: ProductionPointer | None = None
    audit: list[AuditEntry] = Field(default_factory=list, description="the transitions this revision made")

    def state_of(self, version: str) -> State:
        # A complete version without an entry was published by a writer that died before its commit: its
        # files are whole and checksummed, so it is what it would have become, a candidate.
        return self.versions.get(version, State.CANDIDATE)


@dataclass(frozen=True)
class Head:
    document: StateDocument
    next_revision: int  # one past the highest name taken, readable or not


def reconcile_legacy(
    versions: dict[str, State], pointer: ProductionPointer | None
) -> ProductionPointer | None:
    """Finish the pointer of a promotion or rollback that the old layout's writer died in the middle of.

    The old writer changed the states first and ``production.json`` last, one file at a time, so a crash could
    leave one version in state ``production`` and the pointer still on the version it replaced.
    """
    live = [version for version, state in versions.items() if state == State.PRODUCTION]
    if len(live) != 1 or (pointer is not None and pointer.version == live[0]):
        return pointer
    if pointer is None:
        return ProductionPointer(version=live[0])
    if versions.get(pointer.version) == State.ROLLED_BACK:  # a rollback: live[0] came back from the history
        previous = [v for v in pointer.previous if v != live[0]]
    else:  # a promotion: the old pointer's version was retired
        previous = [pointer.version, *pointer.previous]
    return pointer.model_copy(update={"version": live[0], "previous": previous, "replaced": pointer.version})


def audit_file_name(document: StateDocument, index: int) -> str:
    # The time first, as in the files written before commits existed: sorting by name stays chronological.
    stamp = datetime.fromisoformat(document.committed_at).strftime("%Y%m%dT%H%M%S.%f")
    return f"{stamp}-r{document.revision:012d}-{index:02d}.json"


class Journal:
    def __init__(self, fs: AbstractFileSystem, root: str, coordinator: Coordinator, is_local: bool) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.coordinator = coordinator
        self.is_local = is_local

    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _commit_path(self, revision: int) -> str:
        return self._p(COMMITS, f"{revision:012d}.json")

    def _names(self, folder: str) -> list[str]:
        self.fs.invalidate_cache(folder)  # other writers' objects must show up
        try:
            return [path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    def _revisions(self) -> list[int]:
        names = self._names(self._p(COMMITS))
        return sorted(int(m.group(1)) for name in names if (m := _COMMIT_RE.match(name)))

    # ---------------------------------------------------------------- reading
    def head(self) -> Head:
        revisions = self._revisions()
        for revision in reversed(revisions):
            try:
                document = StateDocument.model_validate_json(self.fs.cat_file(self._commit_path(revision)))
            except FileNotFoundError:
                continue  # pruned since the listing
            except ValidationError:
                # Only a torn in-place write (a mount without hard links) can leave one; that writer died
                # before it could report success, so its change never happened.
                log.warning("skipping unreadable registry commit %s", self._commit_path(revision))
                continue
            if document.revision == revision:
                return Head(document, revisions[-1] + 1)
        if revisions:
            raise CorruptStateError(
                f"none of the {len(revisions)} state commits under {self._p(COMMITS)} can be read"
            )
        return Head(self._legacy(), 1)

    def _legacy(self) -> StateDocument:
        versions: dict[str, State] = {}
        for name in self._names(self._p("state")):
            if match := _LEGACY_STATE_RE.match(name):
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    data = json.loads(self.fs.cat_file(self._p("state", name)))
                    versions[match.group(1)] = State(data["state"])
        production = None
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(self.fs.cat_file(self._p("production.json")))
            if data.get("version"):
                production = ProductionPointer.model_validate(data)
        return StateDocument(revision=0, versions=versions, production=reconcile_legacy(versions, production))

    def audit_entries(self) -> list[AuditEntry]:
        folder = self._p("audit")
        entries = {
            name: AuditEntry.model_validate_json(self.fs.cat_file(self._p("audit", name)))
            for name in self._names(folder)
            if name.endswith(".json")
        }
        head = self.head().document
        if head.revision:  # entries a writer killed after its commit had no time to write out
            for index, entry in enumerate(head.audit):
                entries.setdefault(audit_file_name(head, index), entry)
        return [entries[name] for name in sorted(entries)]

    # ---------------------------------------------------------------- writing
    def commit(self, document: StateDocument) -> None:
        """Create the revision; ``FileExistsError`` when another writer committed that revision first."""
        data = document.model_dump_json(indent=2).encode()
        self.coordinator.create(self._commit_path(document.revision), data)

    def materialize(self, document: StateDocument) -> None:
        """Write the revision's audit files and the files older readers read; idempotent."""
        if not document.revision or not document.audit:
            return
        names = [audit_file_name(document, i) for i in range(len(document.audit))]
        self.fs.invalidate_cache(self._p("audit"))
        if self.fs.exists(self._p("audit", names[-1])):
            return  # written last, so everything before it is there
        for version in sorted({entry.version for entry in document.audit}):
            self._write(self._p("state", f"{version}.json"), {"state": document.state_of(version).value})
        moved = any(entry.to_state in _POINTER_STATES for entry in document.audit)
        if document.production and (moved or document.revision == 1):  # 1: may hold a repaired old pointer
            self._write(self._p("production.json"), document.production.model_dump())
        for name, entry in zip(names, document.audit, strict=True):
            self._write(self._p("audit", name), entry.model_dump())

    def prune(self, document: StateDocument) -> None:
        oldest_kept = document.revision - KEEP_COMMITS
        for revision in self._revisions():
            if revision >= oldest_kept:
                break
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._commit_path(revision))

    def _write(self, path: str, data: Any) -> None:
        write_json(self.fs, path, data, self.is_local)


def write_json(fs: AbstractFileSystem, path: str, data: Any, is_local: bool) -> None:
    """Replace a whole small file: a reader sees the old one or the new one, never a mix."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    if not is_local:  # object stores replace whole objects on put
        fs.pipe_file(path, text.encode())
        return
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
