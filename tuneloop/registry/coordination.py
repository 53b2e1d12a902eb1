"""Who may write, and how one write is made exclusive.

Every change of the registry is the creation of an object under a new name (a state commit
``commits/000000000042.json``, a version number's ``versions/v7/.claim``), and :meth:`create` fails with
``FileExistsError`` when the name is taken: two writers can never both believe they made the same change.

* local disk: ``flock`` serialises writers; ``link(2)`` puts a complete, fsynced file under its final name
  at once and fails if the name exists, lock or no lock.
* object stores with a put-if-absent (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``; fsspec exposes
  them as ``pipe_file(..., mode="create")``): the store is the referee, no lock is needed. A probe at the
  first write checks that the store really refuses the second of two creates (some S3-compatible stores
  ignore the header) before it is trusted.
* other stores: a lease object with an expiry. Without a conditional write nothing is exact: the lease holds
  as long as no writer stalls for longer than the settle delay while taking it or than its TTL while holding
  it, and the writers' clocks agree to well within the TTL. ``docs/runbooks.md`` says what that means.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import posixpath
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

from fsspec import AbstractFileSystem

from tuneloop.registry.errors import RegistryBusyError, RegistryError

log = logging.getLogger(__name__)

Mode = Literal["auto", "conditional", "lease"]
PutIfAbsent = Callable[[str, bytes], None]

# What S3 (412 PreconditionFailed, 409 ConditionalRequestConflict: a concurrent conditional write to the same
# key) and GCS (412 Precondition Failed) answer when the name is taken. fsspec backends translate them
# differently from release to release, so the text is the common ground (never a bare number: paths have
# numbers too).
_PRECONDITION = re.compile(
    r"PreconditionFailed|Precondition Failed|ConditionalRequestConflict|pre-conditions you specified"
)


class Coordinator(Protocol):
    def writer(self) -> contextlib.AbstractContextManager[None]:
        """Hold while reading, deciding and committing a change (re-entrant within a thread)."""

    def create(self, path: str, data: bytes) -> None:
        """Write ``data`` under ``path`` whole, or raise ``FileExistsError`` if the name is taken."""

    def describe(self) -> str:
        """How writers are coordinated here, in words (for errors and logs)."""


def fsync_dir(path: str) -> None:
    """Make a rename, link or unlink in ``path`` durable: fsync of the file alone does not cover its name."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Reentrant:
    """Per-thread nesting depth: a writer that calls another writer's step must not wait on itself."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @depth.setter
    def depth(self, value: int) -> None:
        self._local.depth = value


class LocalCoordinator:
    def __init__(self, root: str) -> None:
        self._lock_path = os.path.join(root, ".lock")
        self._held = _Reentrant()

    def describe(self) -> str:
        return "local disk: flock and link(2)"

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        if self._held.depth:
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create(self, path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            _create_in_place(path, data)  # no hard links on this mount (some FUSE and SMB ones)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(folder)


def _create_in_place(path: str, data: bytes) -> None:
    # A crash mid-write leaves a torn file under the final name; readers of commits skip what does not parse.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def is_precondition_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):  # the exception and what it was raised from
        if seen is None:
            return False
        if isinstance(seen, FileExistsError):
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        if _PRECONDITION.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _guarded(write: Callable[[], Any], path: str) -> None:
    try:
        write()
    except FileExistsError:
        raise
    except Exception as exc:
        if is_precondition_failure(exc):
            raise FileExistsError(path) from exc
        raise


def native_put_if_absent(fs: AbstractFileSystem, *, trust_fsspec_create: bool = False) -> PutIfAbsent | None:
    """The store's own put-if-absent, where the fsspec backend is known to send one; else None.

    fsspec's base ``pipe_file(mode="create")`` checks for the file, then writes it: not atomic, so only
    backends known to pass the condition to the store qualify (or any, if the caller vouches for it).
    """
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & {"s3", "s3a"}:
        # s3fs passes extra keyword arguments to PutObject; older s3fs releases know no mode="create".
        return lambda path, data: _guarded(lambda: fs.pipe_file(path, data, IfNoneMatch="*"), path)
    if protocols & {"gs", "gcs"} or trust_fsspec_create:
        # gcsfs turns mode="create" into ifGenerationMatch=0.
        return lambda path, data: _guarded(lambda: fs.pipe_file(path, data, mode="create"), path)
    return None


class ObjectStoreCoordinator:
    # Class attributes so that tests (and operators with slow stores) can tune them.
    lease_ttl_s: float = 30.0
    lease_settle_s: float = 1.0
    lease_wait_s: float = 120.0

    def __init__(self, fs: AbstractFileSystem, root: str, mode: Mode = "auto") -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self._put_if_absent = (
            None if mode == "lease" else native_put_if_absent(fs, trust_fsspec_create=mode == "conditional")
        )
        self._kind: str | None = None if self._put_if_absent else "lease"
        self._resolving = threading.Lock()
        self._held = _Reentrant()
        self._lease = threading.local()

    def describe(self) -> str:
        kind = self._kind or "not yet probed"
        return f"object store ({kind})"

    def _resolve(self) -> str:
        if self._kind is None:
            with self._resolving:
                if self._kind is None:
                    self._kind = "conditional" if self._probe() else "lease"
        return self._kind

    def _probe(self) -> bool:
        assert self._put_if_absent is not None
        path = f"{self.root}/.probe-{uuid.uuid4().hex}"
        try:
            self._put_if_absent(path, b"first")
            try:
                self._put_if_absent(path, b"second")
            except FileExistsError:
                return True
            log.warning("the store under %s ignores conditional writes; writers use a lease", self.root)
            return False
        except Exception as exc:
            # A backend release without mode="create" (TypeError), a store answering 501 NotImplemented:
            # the lease. Anything else (no permission, no network) is the caller's to see, and the next
            # write probes again.
            if isinstance(exc, (TypeError, ValueError, NotImplementedError)) or "NotImplemented" in str(exc):
                log.warning("no conditional writes under %s (%s); writers use a lease", self.root, exc)
                return False
            raise
        finally:
            with contextlib.suppress(Exception):
                self.fs.rm_file(path)

    # ------------------------------------------------------------------ writer
    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        if self._resolve() == "conditional" or self._held.depth:
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        token, expires_at = self._acquire()
        self._lease.token, self._lease.expires_at = token, expires_at
        self._held.depth = 1
        try:
            yield
        finally:
            self._held.depth = 0
            self._release(token)

    def create(self, path: str, data: bytes) -> None:
        if self._resolve() == "conditional":
            assert self._put_if_absent is not None
            self._put_if_absent(path, data)
            return
        if not self._held.depth:
            raise RegistryError("internal error: a lease-coordinated create outside writer()")
        if time.time() > self._lease.expires_at - min(5.0, self.lease_ttl_s / 4):
            raise RegistryBusyError(f"the registry lease on {self.root} ran out before the write; retry")
        self.fs.invalidate_cache(posixpath.dirname(path))
        if self.fs.exists(path):
            raise FileExistsError(path)
        self.fs.pipe_file(path, data)
        # A writer paused past its lease may have written the same name meanwhile; the later write stands.
        if self.fs.cat_file(path) != data:
            raise FileExistsError(path)

    # ------------------------------------------------------------------ lease
    @property
    def _lease_path(self) -> str:
        return f"{self.root}/.lease"

    def _read_lease(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.fs.cat_file(self._lease_path))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # not ours to judge: an unreadable lease is treated as none
        return data if isinstance(data, dict) else None

    def _acquire(self) -> tuple[str, float]:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lease_wait_s
        while True:
            current = self._read_lease()
            if current is None or float(current.get("expires_at", 0)) <= time.time():
                expires_at = time.time() + self.lease_ttl_s
                record = {"owner": token, "host": socket.gethostname(), "pid": os.getpid(),
                          "expires_at": expires_at}
                self.fs.pipe_file(self._lease_path, json.dumps(record).encode())
                # Two writers that both saw no lease both write one. After the settle delay both read the
                # same, later record: exactly one of them finds its own token and goes ahead.
                time.sleep(self.lease_settle_s)
                back = self._read_lease()
                if back is not None and back.get("owner") == token:
                    return token, expires_at
                current = back
            if time.monotonic() > deadline:
                holder = f"{current.get('host')}:{current.get('pid')}" if current else "another writer"
                raise RegistryBusyError(
                    f"registry {self.root} is held by {holder}; a crashed writer's lease expires after "
                    f"{self.lease_ttl_s:.0f} s"
                )
            time.sleep(random.uniform(0.05, 0.3))

    def _release(self, token: str) -> None:
        with contextlib.suppress(Exception):  # an expired lease we no longer own is not an error
            current = self._read_lease()
            if current is not None and current.get("owner") == token:
                self.fs.rm_file(self._lease_path)
