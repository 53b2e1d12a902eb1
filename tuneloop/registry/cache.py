"""The local copies of remote versions that the service and the adapter load.

Layout: ``<cache_dir>/<hash of the registry URL>/<version>-<hash of its manifest>/``. A copy is downloaded
into a ``.tmp-*`` folder, checked against the manifest's sha256 sums and only then renamed to its final name,
so a folder under a final name was complete once; ``verify=True`` (the default everywhere) checks it again
before it is used, and a copy that fails (a truncated or edited file) is fetched afresh. Processes share the
cache: a per-version ``flock`` makes one of them download while the others wait for its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from tuneloop.registry.checksums import verify_files
from tuneloop.registry.errors import CorruptVersionError

STALE_AFTER_S = 6 * 3600.0  # a download folder this old belongs to a process that died


class RemoteCache:
    def __init__(self, folder: Path, registry_url: str) -> None:
        self.folder = folder / hashlib.sha256(registry_url.encode()).hexdigest()[:16]

    def fetch(
        self, fs: AbstractFileSystem, remote_dir: str, version: str, manifest: dict[str, Any], verify: bool
    ) -> Path:
        """A local copy of the version whose files match the manifest (checked now when ``verify``)."""
        files: dict[str, str] = manifest["files"]
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        final = self.folder / f"{version}-{digest}"
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked(version):
            if final.is_dir():
                if not verify:
                    return final
                try:
                    verify_files(final, files, version)
                    return final
                except CorruptVersionError:
                    self._discard(final)
            self._clean_stale()
            staging = self.folder / f".tmp-{uuid.uuid4().hex}"
            try:
                for rel in files:
                    target = staging / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(f"{remote_dir}/{rel}", str(target))
                verify_files(staging, files, version)  # never give an unchecked download a final name
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return final

    @contextlib.contextmanager
    def _locked(self, version: str) -> Iterator[None]:
        with open(self.folder / f"{version}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _discard(self, folder: Path) -> None:
        # Renamed first: another process may still be reading from it (Linux keeps open files readable).
        trash = self.folder / f".tmp-{uuid.uuid4().hex}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_stale(self) -> None:
        now = time.time()
        for entry in self.folder.glob(".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                if now - newest_mtime(entry) > STALE_AFTER_S:
                    shutil.rmtree(entry, ignore_errors=True)


def newest_mtime(folder: Path) -> float:
    """When anything under the folder last changed: a download still writing keeps it young."""
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, path.stat().st_mtime)
    return newest
