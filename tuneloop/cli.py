"""The ``tuneloop`` command line.

The registry commands live here; each deployable (adapter, service, monitoring) mounts its own
commands through the ``tuneloop.commands`` entry-point group, so this package imports none of them.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.registry import Registry, RegistryError, State
from tuneloop.settings import Settings, load_settings

app = typer.Typer(
    name="tuneloop",
    help="Serve a fine-tuned text classifier, log its traffic, watch it drift, re-fine-tune and hot-swap it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="The model registry: versions, their cards and their life cycle.", no_args_is_help=True)
app.add_typer(models_app, name="models")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, however narrow the terminal

ConfigOption = Annotated[Optional[str], typer.Option("--config", help="YAML settings file (also TUNELOOP_CONFIG).")]
RegistryOption = Annotated[
    Optional[str], typer.Option("--registry", help="Registry root: folder or fsspec URL (also TUNELOOP_REGISTRY).")
]
ActorOption = Annotated[Optional[str], typer.Option("--actor", help="Who does this (default: the login name).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, for the audit log.")]


def settings_from_options(config: str | None = None, registry: str | None = None) -> Settings:
    overrides = {"registry": registry} if registry else {}
    return load_settings(config, **overrides)


def current_actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return os.environ.get("TUNELOOP_ACTOR") or getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error (no traceback) and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def open_registry(config: str | None, registry: str | None) -> Registry:
    return Registry(settings_from_options(config, registry).registry)


@contextlib.contextmanager
def changing_registry(config: str | None, registry: str | None) -> Iterator[Registry]:
    """The registry for a command that changes it: each transition is published on tuneloop.model-events (the
    event log delivers it, or spools it for a live tuneloop process to replay, before the command exits)."""
    settings = settings_from_options(config, registry)
    reg = Registry(settings.registry)
    if not settings.kafka.enabled:
        yield reg
        return
    from tuneloop.events.producer import EventLog
    from tuneloop.events.transitions import TransitionPublisher

    events = EventLog(settings.kafka, source=f"tuneloop-cli/{current_actor(None)}")
    events.start()
    if not events.wait_connected(timeout=2 * settings.kafka.connect_timeout_ms / 1000):
        err_console.print(f"[yellow]warning:[/] the event broker ({settings.kafka.bootstrap_servers}) is not "
                          "reachable: the transition is spooled for a running tuneloop process to publish")
    reg.listeners.append(TransitionPublisher(events))
    try:
        yield reg
    finally:
        events.flush(timeout=10)
        events.close(timeout=10)


@models_app.command("list")
def models_list(
    registry: RegistryOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of objects, for scripts.")] = False,
) -> None:
    """List every version with its state and test metrics."""
    reg = open_registry(config, registry)
    rows = reg.list_versions()
    production = reg.production()
    if as_json:
        typer.echo(json.dumps([r.as_dict() | {"production": r.version == production} for r in rows], indent=2))
        return
    table = Table(title=f"models in {reg.root_url}")
    for col in ("version", "model", "state", "strategy", "accuracy", "macro-F1", "ECE", "parent", "created"):
        table.add_column(col)
    for r in rows:
        marker = " ★" if r.version == production else ""
        table.add_row(
            r.version + marker, r.model_name, r.state, r.strategy,
            f"{r.metrics.get('accuracy', float('nan')):.3f}", f"{r.metrics.get('f1_macro', float('nan')):.3f}",
            f"{r.metrics.get('ece', float('nan')):.3f}", r.parent_version or "-", r.created_at[:19],
        )
    console.print(table)


@models_app.command("show")
def models_show(
    version: str,
    registry: RegistryOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The card, state and audit log as JSON.")] = False,
) -> None:
    """Show one version's card, state and audit trail."""
    reg = open_registry(config, registry)
    card = reg.card(version)
    state = reg.state(version)
    audit = [entry.__dict__ for entry in reg.audit_log(version)]
    if as_json:
        payload = {"version": version, "state": state.value, "production": reg.production() == version,
                   "card": json.loads(card.model_dump_json()), "audit": audit}
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(f"[bold]{card.model_name} {version}[/] — state [cyan]{state.value}[/]")
    console.print(f"base model {card.base_model}, strategy {card.strategy}, parent {card.parent_version or '-'}")
    console.print(f"labels {card.labels}; splits {card.splits}")
    console.print(f"hyperparameters {card.hyperparameters}")
    for name, metrics in card.metrics.items():
        console.print(
            f"test set [bold]{name}[/]: n={metrics.n} accuracy={metrics.accuracy:.4f} "
            f"macro-F1={metrics.f1_macro:.4f} ECE={metrics.ece:.4f}"
        )
    for precision, report in card.parity.items():
        console.print(
            f"parity {precision}: max|Δlogit|={report.max_abs_logit_diff:.2e} "
            f"agreement={report.label_agreement:.4f} Δacc={report.accuracy_diff:+.4f} "
            f"{'[green]passed[/]' if report.passed else '[red]failed[/]'}"
        )
    console.print(f"timings {card.timings.model_dump()}")
    table = Table(title="audit log")
    for col in ("at", "from", "to", "actor", "reason"):
        table.add_column(col)
    for entry in audit:
        table.add_row(entry["at"][:19], entry["from_state"] or "-", entry["to_state"], entry["actor"], entry["reason"])
    console.print(table)


def _transition_command(target: State, help_text: str):
    def command(
        version: str,
        reason: ReasonOption = "",
        actor: ActorOption = None,
        registry: RegistryOption = None,
        config: ConfigOption = None,
    ) -> None:
        with changing_registry(config, registry) as reg:
            reg.transition(version, target, current_actor(actor), reason or f"{target.value} from the CLI")
        console.print(f"{version} → [cyan]{target.value}[/]")

    command.__doc__ = help_text
    return command


models_app.command("approve")(_transition_command(State.APPROVED, "Approve a version for promotion."))
models_app.command("reject")(_transition_command(State.REJECTED, "Reject a candidate or awaiting version."))


@models_app.command("promote")
def models_promote(
    version: str,
    reason: ReasonOption = "promoted from the CLI",
    actor: ActorOption = None,
    registry: RegistryOption = None,
    config: ConfigOption = None,
) -> None:
    """Make an approved version the production one (the previous one is retired)."""
    with changing_registry(config, registry) as reg:
        previous = reg.promote(version, current_actor(actor), reason)
    console.print(f"{version} is in production" + (f" (replacing {previous}, now retired)" if previous else ""))


@models_app.command("rollback")
def models_rollback(
    reason: ReasonOption = "rolled back from the CLI",
    expect: Annotated[Optional[str], typer.Option(
        "--expect", help="The version to pull: refuse if another is in production; a rollback retried after a "
                         "crash is then not done twice.")] = None,
    actor: ActorOption = None,
    registry: RegistryOption = None,
    config: ConfigOption = None,
) -> None:
    """Pull the production version and reinstate the one it replaced."""
    with changing_registry(config, registry) as reg:
        pulled, restored = reg.rollback(current_actor(actor), reason, expect=expect)
    console.print(f"{pulled} rolled back; {restored} is in production again")


@models_app.command("verify")
def models_verify(version: str, registry: RegistryOption = None, config: ConfigOption = None) -> None:
    """Check every file of a version against its sha256 manifest."""
    reg = open_registry(config, registry)
    reg.verify(version)
    console.print(f"{version}: every file matches its checksum")


def _mount_deployable_commands() -> None:
    for entry in entry_points(group="tuneloop.commands"):
        entry.load()(app)


def main() -> None:
    _mount_deployable_commands()
    try:
        app()
    except RegistryError as exc:  # every command's registry errors end here: one red line, exit 2
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
