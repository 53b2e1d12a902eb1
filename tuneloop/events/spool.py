"""A durable local spool for events the broker could not take (yet).

Append-only segment files ``<seq>.spool`` of length- and CRC-framed records. The writer appends to
one active segment; the replayer reads only sealed segments, in sequence order, and deletes a
segment once every event in it was acknowledged by the broker. A crash can leave a torn record at
the end of a segment: readers stop there (what was not fully written was never acknowledged to
anyone). Segments left by a previous process are sealed at start-up, so a restart replays them.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Literal

from tuneloop.events.envelope import Envelope

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
FsyncPolicy = Literal["always", "batch", "never"]


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
        self._handle = None
        self._active_records = 0
        self._last_fsync = time.monotonic()
        self._dirty = False
        existing = self._segments()
        self._next_seq = int(existing[-1].stem) + 1 if existing else 1
        self._bytes = sum(p.stat().st_size for p in existing)
        self.dropped = 0
        self.cap_logged = False

    # ------------------------------------------------------------------ writing
    def append(self, envelope: Envelope) -> bool:
        """Append one event; False (and the event is lost, loudly) only when the size cap is hit."""
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
            if self._handle is None:
                self._open_segment()
            self._handle.write(record)
            self._handle.flush()
            self._bytes += len(record)
            self._active_records += 1
            self._dirty = True
            if self.fsync == "always" or (
                self.fsync == "batch" and time.monotonic() - self._last_fsync >= self.batch_fsync_interval_s
            ):
                self._fsync_locked()
            if self._handle.tell() >= self.segment_bytes:
                self._seal_locked()
        return True

    def _fsync_locked(self) -> None:
        if self._handle is not None and self._dirty:
            os.fsync(self._handle.fileno())
        self._dirty = False
        self._last_fsync = time.monotonic()

    def sync(self) -> None:
        """Make every appended event durable now (unless the policy is "never")."""
        if self.fsync != "never":
            with self._lock:
                self._fsync_locked()

    def sync_if_due(self) -> None:
        """With fsync=batch, bound how long the tail of a burst stays only in the page cache."""
        if self.fsync == "batch" and self._dirty and time.monotonic() - self._last_fsync >= self.batch_fsync_interval_s:
            self.sync()

    def _open_segment(self) -> None:
        self._active = self.directory / f"{self._next_seq:012d}.spool"
        self._next_seq += 1
        self._handle = open(self._active, "ab")
        self._active_records = 0

    def _seal_locked(self) -> None:
        if self._handle is not None:
            if self.fsync != "never":
                self._fsync_locked()
            self._handle.close()
        self._handle = None
        self._active = None

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

    def sealed_segments(self) -> list[Path]:
        with self._lock:
            return [p for p in self._segments() if p != self._active]

    def read_segment(self, path: Path) -> list[Envelope]:
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
        with self._lock:
            size = path.stat().st_size if path.exists() else 0
            path.unlink(missing_ok=True)
            self._bytes = max(0, self._bytes - size)
            if self._bytes < self.max_bytes:
                self.cap_logged = False

    @property
    def bytes(self) -> int:
        return self._bytes

    def is_empty(self) -> bool:
        with self._lock:
            return self._bytes == 0
