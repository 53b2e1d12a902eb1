"""A durable local spool for events the broker could not take (yet).

Append-only segment files ``<seq>.spool`` of length- and CRC-framed records. The writer appends to
one active segment; the replayer reads only sealed segments, in sequence order, and deletes a
segment once every event in it was acknowledged by the broker. A crash can leave a torn record at
the end of a segment: readers stop there (what was not fully written was never acknowledged to
anyone). A write the disk refuses (ENOSPC, EIO) is cut off the segment again and the event dropped.

Every process spools to a folder of its own under the spool root (``TUNELOOP_SPOOL_DIR``), held with an
exclusive ``flock`` for as long as it lives: processes sharing one folder would replay each other's
events and delete segments the other still writes. A folder whose lock is free belongs to a process that
is gone; a live one adopts it (``orphaned_folders``), replays it and removes it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tuneloop.events.envelope import Envelope
from tuneloop.settings import KafkaSettings

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
FsyncPolicy = Literal["always", "batch", "never"]
_LOCK_FILE = ".lock"
_CLAIMING = ".claiming-"  # a folder being set up: not yet locked, so no one else may look at it


class Spool:
    def __init__(self, directory: Path, max_bytes: int, fsync: FsyncPolicy = "batch",
                 segment_bytes: int = 8 << 20, batch_fsync_interval_s: float = 0.2) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.batch_fsync_interval_s = batch_fsync_interval_s
        self._lock = threading.Lock()
        self._active: Path | None = None
        self._fd: int | None = None
        self._active_bytes = 0
        self._last_fsync = time.monotonic()
        self._dirty = False
        existing = self._segments()
        self._next_seq = int(existing[-1].stem) + 1 if existing else 1
        self._bytes = 0
        self._recount_locked()
        self.dropped = 0
        self.cap_logged = False
        self.disk_error_logged = False

    @classmethod
    def from_settings(cls, directory: Path, settings: KafkaSettings) -> Spool:
        """A process's own spool folder, as ``kafka.spool_*`` configures it."""
        return cls(directory, settings.spool_max_bytes, settings.spool_fsync,
                   segment_bytes=settings.spool_segment_bytes,
                   batch_fsync_interval_s=settings.spool_fsync_interval_ms / 1000)

    # ------------------------------------------------------------------ writing
    def append(self, envelope: Envelope) -> bool:
        """Append one event; False (and the event is lost, loudly) when the size cap is hit or the disk
        refuses the write. Never raises an OSError: the caller is a request or the sender thread."""
        payload = json.dumps({"kind": envelope.kind, "key": envelope.key.decode("utf-8", "surrogateescape"),
                              "id": envelope.event_id, "value": envelope.value.decode("utf-8")}).encode()
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._bytes + len(record) > self.max_bytes:
                self.dropped += 1
                if not self.cap_logged:  # once per episode, not once per event
                    log.error("EVENT SPOOL FULL (%d bytes, cap %d): dropping events until the broker drains it",
                              self._bytes, self.max_bytes)
                    self.cap_logged = True
                return False
            try:
                self._write_locked(record)
            except OSError as exc:
                self.dropped += 1
                self._disk_error_locked(exc, "write")
                return False
            if self.disk_error_logged:
                log.warning("event spool %s takes writes again", self.directory)
                self.disk_error_logged = False
            self._bytes += len(record)
            if self._active_bytes >= self.segment_bytes:
                self._seal_locked()
        return True

    def _write_locked(self, record: bytes) -> None:
        """The whole record and its fsync, or (raising) nothing: a partial record in the middle of a
        segment would stop every reader there and lose the records after it."""
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        start = self._active_bytes
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(self._fd, view):]
            self._active_bytes = start + len(record)
            self._dirty = True
            if self.fsync == "always" or (
                self.fsync == "batch" and time.monotonic() - self._last_fsync >= self.batch_fsync_interval_s
            ):
                self._fsync_locked()
        except OSError:
            self._cut_back_locked(start)
            raise

    def _cut_back_locked(self, size: int) -> None:
        """Remove what a failed append left; if even that fails, seal the segment (a torn record at the
        end of a segment is skipped by readers) so that later events start a clean one."""
        self._active_bytes = size
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, size)  # shrinking needs no free space
        except OSError:
            self._close_fd_locked()
            self._recount_locked()

    def _fsync_locked(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
        self._dirty = False
        self._last_fsync = time.monotonic()

    def _disk_error_locked(self, exc: OSError, doing: str) -> None:
        if not self.disk_error_logged:  # once per episode, not once per event
            log.error("EVENT SPOOL DISK ERROR in %s (%s failed: %s): events that cannot be written are "
                      "dropped until writes succeed again", self.directory, doing, exc)
            self.disk_error_logged = True

    def sync(self) -> None:
        """Make every appended event durable now (unless the policy is "never"). A failed fsync is logged:
        the events stay in the segment (the replayer reads them back from the page cache)."""
        if self.fsync != "never":
            with self._lock:
                try:
                    self._fsync_locked()
                except OSError as exc:
                    self._disk_error_locked(exc, "fsync")

    def sync_if_due(self) -> None:
        """With fsync=batch, bound how long the tail of a burst stays only in the page cache."""
        if self.fsync == "batch" and self._dirty and time.monotonic() - self._last_fsync >= self.batch_fsync_interval_s:
            self.sync()

    def _open_segment(self) -> None:
        path = self.directory / f"{self._next_seq:012d}.spool"
        self._next_seq += 1  # a failed open skips a number: readers only need the order
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._active = path
        self._active_bytes = os.fstat(self._fd).st_size

    def _close_fd_locked(self) -> None:
        fd, self._fd, self._active = self._fd, None, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:  # the data went through write(); a failing close loses nothing more
                log.debug("closing a spool segment: %s", exc)

    def _seal_locked(self) -> None:
        if self._fd is not None and self.fsync != "never":
            try:
                self._fsync_locked()
            except OSError as exc:  # sealed all the same: the replayer must still get to these events
                self._disk_error_locked(exc, "fsync")
        self._close_fd_locked()

    def seal(self) -> None:
        """Close the active segment so the replayer may read it."""
        with self._lock:
            self._seal_locked()

    def close(self) -> None:
        self.seal()

    # ------------------------------------------------------------------ reading
    def _segments(self) -> list[Path]:
        # Only our own names: a stray file in the folder must not stop the service from starting.
        return sorted((p for p in self.directory.glob("*.spool") if p.stem.isdigit()), key=lambda p: int(p.stem))

    def _recount_locked(self) -> None:
        """The size of what is on disk: a segment deleted under us must not keep us in spool mode forever."""
        total = 0
        for path in self._segments():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        self._bytes = total

    def sealed_segments(self) -> list[Path]:
        with self._lock:
            return [p for p in self._segments() if p != self._active]

    def read_segment(self, path: Path) -> list[Envelope]:
        """The events of a segment; FileNotFoundError if it vanished."""
        envelopes = []
        data = path.read_bytes()
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            payload = data[offset + _HEADER.size: offset + _HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                log.warning("spool segment %s has a torn or corrupt record at byte %d; the rest is skipped",
                            path.name, offset)
                break
            item = json.loads(payload)
            envelopes.append(Envelope(kind=item["kind"], key=item["key"].encode("utf-8", "surrogateescape"),
                                      value=item["value"].encode("utf-8"), event_id=item["id"]))
            offset += _HEADER.size + length
        return envelopes

    def remove(self, path: Path) -> None:
        """Delete a replayed (or vanished) segment."""
        with self._lock:
            path.unlink(missing_ok=True)
            self._recount_locked()
            if self._bytes < self.max_bytes:
                self.cap_logged = False

    @property
    def bytes(self) -> int:
        return self._bytes

    def is_empty(self) -> bool:
        with self._lock:
            return self._bytes == 0


# ---------------------------------------------------------------------- one folder per process
class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock``: whoever holds it owns the folder's segments.

    flock(2), not POSIX record locks (lockf, F_SETLK): its lock belongs to the open file, so looking at a
    sibling's lock file (and closing it) never releases the sibling's lock, and two EventLogs in one process
    exclude each other like two processes. The kernel drops the lock when its holder dies, however it dies.
    """

    def __init__(self, folder: Path, fd: int, *, removable: bool = True) -> None:
        self.folder = folder
        self._fd: int | None = fd
        self._removable = removable

    @classmethod
    def try_take(cls, folder: Path, *, removable: bool = True) -> FolderLock | None:
        """The folder's lock, or None while another process holds it (or the folder is gone)."""
        path = folder / _LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except (FileNotFoundError, NotADirectoryError):  # removed by the process that adopted it
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The previous holder may have removed the folder between our open and our flock: a lock on a
            # file that is no longer at that path guards nothing.
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(folder, fd, removable=removable)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def remove_folder(self) -> None:
        """Delete the lock file and the folder (if nothing else is left in it), then let go of the lock."""
        try:
            if self._fd is not None and self._removable:
                (self.folder / _LOCK_FILE).unlink(missing_ok=True)  # first: a late opener sees a stale lock
                try:
                    self.folder.rmdir()
                except OSError as exc:  # not empty (a file that is not ours), or already gone
                    log.debug("spool folder %s stays: %s", self.folder, exc)
        finally:
            self.release()


def claim_folder(root: Path) -> FolderLock:
    """A new folder of this process's own under ``root``, locked before any other process can see it."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"p-{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
    staging = root / f"{_CLAIMING}{name}"
    staging.mkdir()
    lock = FolderLock.try_take(staging)
    if lock is None:  # only we know this name
        raise RuntimeError(f"could not lock the new spool folder {staging}")
    # A rename keeps the open lock file: the folder appears under its real name already held.
    lock.folder = staging.rename(root / name)
    return lock


def orphaned_folders(root: Path, exclude: Path) -> Iterator[FolderLock]:
    """Spool folders under ``root`` whose process is gone, each locked for the caller as it is yielded (a
    caller that stops early holds no more than it got). Oldest layout first: segments directly in ``root``
    (one folder for all processes, before folders per process)."""
    if any(root.glob("*.spool")):
        legacy = FolderLock.try_take(root, removable=False)
        if legacy is not None:
            yield legacy
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".") or entry == exclude or not entry.is_dir():
            continue
        try:
            lock = FolderLock.try_take(entry)
        except PermissionError as exc:  # another user's process: its events are not ours to send
            log.debug("skipping spool folder %s: %s", entry, exc)
            continue
        if lock is not None:
            yield lock
