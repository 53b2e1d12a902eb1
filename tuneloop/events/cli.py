"""``tuneloop broker``: a Kafka-compatible broker (Tansu) on a loopback port, for development."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def broker(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run Tansu (in-memory storage) until Ctrl-C; clients use --bootstrap HOST:PORT."""
    from tuneloop.events.broker import TansuBroker
    from tuneloop.events.errors import BrokerError

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with TansuBroker(port=port, host=host) as running:
            console.print(f"Kafka-compatible broker ready on [bold]{running.bootstrap_servers}[/] "
                          "(in-memory: its data is gone when it stops)")
            while not stop.wait(0.5):
                if running.proc.poll() is not None:
                    raise BrokerError(f"tansu exited with code {running.proc.returncode}")
    except BrokerError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.command("broker")(broker)
