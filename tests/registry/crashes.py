"""Fault injection for the crash tests: SIGKILL a forked child right after its k-th write to storage.

A step is any call that changes what is stored. On a local disk: ``os.rename``, ``replace``, ``link``,
``unlink``, ``remove``, ``mkdir``, ``rmdir``, ``fsync`` (a file's or a folder's writing made durable) and
``shutil.copyfile``; on the ``objdir`` object store (objstore.py) every whole-object put, delete, copy or
move.
Steps are counted, not named, so every step of the code under test is covered, whatever the code is: the
same tests run against an older registry, where they show what it got wrong.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from tests.registry.objstore import ObjDirFileSystem

WATCHED_OS_CALLS = ("rename", "replace", "link", "unlink", "remove", "mkdir", "rmdir", "fsync")


class Injector:
    def __init__(self, kill_at: int | None, trace: Path | None) -> None:
        self.kill_at = kill_at
        self.trace = trace
        self.count = 0

    def __call__(self, what: str) -> None:
        if ObjDirFileSystem.depth:
            return  # the local writes that one object-store call is made of are not steps of their own
        self.count += 1
        if self.trace is not None:
            with open(self.trace, "a") as handle:
                handle.write(what + "\n")
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        for name in WATCHED_OS_CALLS:
            setattr(os, name, self._after(getattr(os, name), f"os.{name}"))
        shutil.copyfile = self._after(shutil.copyfile, "copyfile")  # type: ignore[assignment]
        ObjDirFileSystem.on_mutation = staticmethod(self)  # type: ignore[assignment]

    def _after(self, real: Callable[..., Any], what: str) -> Callable[..., Any]:
        @wraps(real)
        def step(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            self(what)
            return result

        return step


def run_forked(action: Callable[[], object], kill_at: int | None = None, trace: Path | None = None) -> int:
    """Run ``action`` in a forked child; its exit status, or minus the signal that ended it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        code = 0
        try:
            Injector(kill_at, trace).install()
            action()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def steps_of(action: Callable[[], object], trace: Path) -> list[str]:
    """Every step ``action`` takes, in order (it runs to the end, in a child)."""
    trace.unlink(missing_ok=True)
    code = run_forked(action, trace=trace)
    if code != 0:
        raise AssertionError(f"the operation failed without any fault injected (exit {code})")
    return trace.read_text().splitlines() if trace.exists() else []
