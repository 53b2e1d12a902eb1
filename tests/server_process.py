"""Real ``tuneloop serve`` processes on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tuneloop.events.broker import free_port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process below it."""
    return sum(process_cpu_seconds(pid) for pid in process_tree(root))


class ServerProcess:
    def __init__(self, registry: Path | str, log_path: Path, *, grpc: bool = True, env: dict[str, str] | None = None,
                 args: list[str] | None = None, poll_interval_s: float | None = 0.2) -> None:
        """``poll_interval_s``: how often the server looks for a new production version; tests look fast, a
        benchmark passes None for the shipped default (a look at the registry costs CPU that the rate of a
        fast poll would add to every request's share)."""
        self.registry = str(registry)
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.log_path = log_path
        # No event log unless a test asks for one (with a broker and a spool folder of its own). A BentoML home
        # of its own: every `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir, which would zero
        # the counters of any other server running at the time.
        poll = {} if poll_interval_s is None else {"TUNELOOP_SERVING__POLL_INTERVAL_S": str(poll_interval_s)}
        self.env = {**os.environ, **poll, "TUNELOOP_KAFKA__ENABLED": "false",
                    "BENTOML_HOME": str(log_path.parent / f"bentoml-{self.http_port}"), **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        tuneloop = Path(sys.executable).parent / "tuneloop"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(tuneloop), "serve", "--host", "127.0.0.1", "--port", str(self.http_port),
             "--grpc-port", str(self.grpc_port), "--registry", self.registry, *self.args],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s; log: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        finally:
            self._log.close()

    def descendants(self) -> list[int]:
        """Every process below the server: BentoML's workers are not in the supervisor's process group."""
        return process_tree(self.proc.pid) if self.proc else []

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and every process under it."""
        return tree_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def crash(self) -> None:
        """SIGKILL the server and every worker under it at once, as when its container dies."""
        for pid in self.descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
