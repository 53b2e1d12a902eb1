"""Reference samples: what each model version's traffic is compared with, read from the registry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from monitoring.errors import ReferenceUnavailableError
from monitoring.window import WindowData
from tuneloop.registry import Registry

REQUIRED = ("embeddings", "probabilities", "predictions")


@dataclass(frozen=True)
class ReferenceSample:
    version: str
    labels: list[str]  # label names, index = class id
    data: WindowData


ReferenceLoader = Callable[[str], ReferenceSample]


class RegistryReferences:
    """Loads ``reference.npz`` of a version once (versions are immutable, so the cache never goes stale)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[str, ReferenceSample] = {}
        self._lock = threading.Lock()

    def __call__(self, version: str) -> ReferenceSample:
        with self._lock:
            if version not in self._cache:
                self._cache[version] = self._load(version)
            return self._cache[version]

    def forget(self, version: str) -> None:
        with self._lock:
            self._cache.pop(version, None)

    def _load(self, version: str) -> ReferenceSample:
        try:
            opened = self.registry.open_version(version)
            arrays = opened.reference()
        except Exception as exc:  # any unreadable version (missing, corrupt, malformed) is the same to us
            raise ReferenceUnavailableError(version, str(exc)) from exc
        return reference_from_arrays(version, list(opened.card.labels or opened.labels), arrays)


def reference_from_arrays(version: str, labels: list[str], arrays: dict) -> ReferenceSample:
    missing = [key for key in REQUIRED if key not in arrays]
    if missing:
        raise ReferenceUnavailableError(version, f"reference.npz lacks {', '.join(missing)}")
    data = WindowData.from_reference(arrays)
    n = len(data)
    if data.embeddings.ndim != 2 or data.embeddings.shape[0] != n or data.probabilities.shape[0] != n:
        raise ReferenceUnavailableError(version, "reference arrays disagree on the number of rows")
    if n < 10:
        raise ReferenceUnavailableError(version, f"only {n} reference rows; drift needs a real sample")
    return ReferenceSample(version=version, labels=labels, data=data)
