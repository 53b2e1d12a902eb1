"""``tuneloop adapt`` (the sidecar) and ``tuneloop retrain`` (ask for one retraining now)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

log = logging.getLogger("tuneloop.adapter")

ConfigOption = Annotated[Optional[str], typer.Option("--config", help="YAML settings file (also TUNELOOP_CONFIG).")]
RegistryOption = Annotated[Optional[str], typer.Option("--registry", help="Registry root (also TUNELOOP_REGISTRY).")]
StoreOption = Annotated[Optional[str], typer.Option(
    "--store", help="Label store URL: sqlite:///path or postgresql+psycopg://… (also TUNELOOP_ADAPTER__STORE_URL).")]


def _settings(config: str | None, registry: str | None, **adapter: object):
    from tuneloop.cli import settings_from_options

    settings = settings_from_options(config, registry)
    given = {k: v for k, v in adapter.items() if v is not None}
    if given:
        settings.adapter = settings.adapter.model_copy(update=given)
    return settings


def adapt(
    config: ConfigOption = None,
    registry: RegistryOption = None,
    store: StoreOption = None,
    policy: Annotated[Optional[Path], typer.Option("--policy", help="YAML adaptation policy (also TUNELOOP_ADAPTER__POLICY_FILE).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="The alert webhook, /status and /metrics (0: any free).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address of the webhook and the admin port.")] = None,
    admin_port: Annotated[Optional[int], typer.Option("--admin-port", help="The admin API and console (0: any free).")] = None,
    admin_tokens: Annotated[Optional[Path], typer.Option("--admin-tokens", help="The admin tokens file (also TUNELOOP_ADAPTER__ADMIN_TOKENS_FILE).")] = None,
    monitor_url: Annotated[Optional[str], typer.Option("--monitor-url", help="The drift monitor, for the console (http://host:port).")] = None,
) -> None:
    """Close the loop: join feedback to predictions, retrain on drift or fresh labels, gate, watch promotions."""
    from adapter.admin.errors import AdminError
    from adapter.errors import AdapterError
    from adapter.loop.policy import AdapterPolicy
    from adapter.loop.service import AdapterService
    from tuneloop.cli import fail

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(config, registry, store_url=store, policy_file=policy, port=port, host=host,
                             admin_port=admin_port, admin_tokens_file=admin_tokens, monitor_url=monitor_url)
        service = AdapterService(settings, AdapterPolicy.load(settings.adapter.policy_file))
    except (AdapterError, AdminError) as exc:
        raise fail(str(exc)) from None
    service.start()
    log.info("adapter: store %s, registry %s, webhook and metrics on %s:%d, admin on %s, consuming as %s",
             service.store.safe_url, settings.registry, settings.adapter.host, service.port,
             service.admin_port if settings.adapter.admin_port is not None else "no port",
             settings.adapter.consumer_group)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    service.stop()


def retrain(
    reason: Annotated[str, typer.Option("--reason", help="Why, for the run's record.")] = "asked from the CLI",
    actor: Annotated[Optional[str], typer.Option("--actor", help="Who asks (default: the login name).")] = None,
    config: ConfigOption = None,
    store: StoreOption = None,
) -> None:
    """Ask for one retraining now: the adapter runs it once enough fresh labels are there."""
    from adapter.errors import AdapterError
    from adapter.loop.policy import AdapterPolicy
    from adapter.loop.store import LabelStore
    from adapter.loop.triggers import Triggers
    from tuneloop.cli import console, current_actor, fail

    try:
        settings = _settings(config, None, store_url=store)
        policy = AdapterPolicy.load(settings.adapter.policy_file)
        trigger = Triggers(LabelStore(settings.adapter.store_url), policy.triggers).manual(current_actor(actor),
                                                                                           reason)
    except AdapterError as exc:
        raise fail(str(exc)) from None
    console.print(f"retraining requested (trigger {trigger}); the adapter runs it once "
                  f"{policy.triggers.min_fresh_examples} fresh labelled examples are there")


def register(app: typer.Typer) -> None:
    app.command("adapt")(adapt)
    app.command("retrain")(retrain)
