"""A local folder seen through fsspec as an object store: ``objdir:///abs/path``.

The registry treats every filesystem but the local one as an object store, so this runs that code path
(version claims, manifest written last, the download cache, conditional writes or the lease) on a disk that
outlives a SIGKILLed process, which ``memory://`` does not. ``pipe_file(mode="create")`` is atomic here, as
S3's ``If-None-Match: *`` is: a complete temporary file is linked to the name, which fails if it is taken.
``ObjDirFileSystem.on_mutation`` is called after every write, for the crash tests' fault injection.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "objdir"


def _noop(_: str) -> None:
    return None


class ObjDirFileSystem(DirFileSystem):
    protocol = PROTOCOL
    on_mutation: ClassVar[Callable[[str], None]] = staticmethod(_noop)
    # Set by the fault injector: inside one of our calls, the local filesystem's own writes are not steps.
    depth: ClassVar[int] = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(path="/", fs=LocalFileSystem(auto_mkdir=True), **kwargs)
        self.path = ""  # paths pass through unchanged: they are absolute local paths

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return path.rstrip("/") or "/"

    def _step(self, what: str, call: Callable[[], Any]) -> Any:
        type(self).depth += 1
        try:
            result = call()
        finally:
            type(self).depth -= 1
        type(self).on_mutation(what)
        return result

    # Writes replace whole objects at once, as object stores do: readers never see half a file.
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode == "create":
            return self._step("pipe_file:create", lambda: _link_create(path, value))
        return self._step("pipe_file", lambda: _replace(path, lambda tmp: _write(tmp, value)))

    def put_file(self, lpath: str, rpath: str, *args: Any, **kwargs: Any) -> None:
        return self._step("put_file", lambda: _replace(rpath, lambda tmp: shutil.copyfile(lpath, tmp)))

    def get_file(self, rpath: str, lpath: str, *args: Any, **kwargs: Any) -> None:
        download = super().get_file
        return self._step("get_file", lambda: download(rpath, lpath, *args, **kwargs))

    def rm_file(self, path: str, **kwargs: Any) -> None:
        return self._step("rm_file", lambda: super(ObjDirFileSystem, self).rm_file(path, **kwargs))

    def rm(self, path: str, *args: Any, **kwargs: Any) -> None:
        return self._step("rm", lambda: super(ObjDirFileSystem, self).rm(path, *args, **kwargs))

    def mv(self, path1: str, path2: str, *args: Any, **kwargs: Any) -> None:
        return self._step("mv", lambda: super(ObjDirFileSystem, self).mv(path1, path2, *args, **kwargs))

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode:
            return super().open(path, mode, *args, **kwargs)
        return _WholeObjectWriter(self, path, mode)


class _WholeObjectWriter:
    """``open(path, "w")`` on an object store: nothing is there until close, then all of it is."""

    def __init__(self, fs: ObjDirFileSystem, path: str, mode: str) -> None:
        self._fs, self._path = fs, path
        self._buffer = io.StringIO() if "b" not in mode else io.BytesIO()

    def write(self, data: Any) -> int:
        return self._buffer.write(data)

    def close(self) -> None:
        value = self._buffer.getvalue()
        self._fs.pipe_file(self._path, value.encode() if isinstance(value, str) else value)

    def __enter__(self) -> _WholeObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def _write(path: str, value: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(value)


def _replace(path: str, fill: Callable[[str], object]) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".put-{uuid.uuid4().hex}")
    fill(tmp)
    os.replace(tmp, path)


def _link_create(path: str, value: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".put-{uuid.uuid4().hex}")
    _write(tmp, value)
    try:
        os.link(tmp, path)  # FileExistsError when the name is taken, like a 412 from S3
    finally:
        os.unlink(tmp)


class SloppyObjDirFileSystem(ObjDirFileSystem):
    """A store that ignores conditional writes (as some S3-compatible ones ignore ``If-None-Match``)."""

    protocol = "objdir-sloppy"

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        path = str(path)
        if path.startswith("objdir-sloppy://"):
            path = path[len("objdir-sloppy://"):]
        return path.rstrip("/") or "/"

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        return super().pipe_file(path, value, **kwargs)  # the condition is dropped


fsspec.register_implementation(PROTOCOL, ObjDirFileSystem, clobber=True)
fsspec.register_implementation("objdir-sloppy", SloppyObjDirFileSystem, clobber=True)
