"""sha256 of stored files, and the check of a folder against a version's manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tuneloop.registry.errors import CorruptVersionError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
