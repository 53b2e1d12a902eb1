"""``tuneloop monitor``: consume predictions, watch them drift, serve /metrics and /reports."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger("tuneloop.monitor")


def register(app: typer.Typer) -> None:
    """Mount ``tuneloop monitor`` and ``tuneloop alertmanager-config`` (entry point group ``tuneloop.commands``)."""
    app.command("monitor")(monitor)
    app.command("alertmanager-config")(alertmanager_config)


def alertmanager_config(
    webhook_url: Annotated[str, typer.Option(
        envvar="TUNELOOP_ALERT_WEBHOOK_URL", help="The adapter's alert webhook, e.g. http://adapter:8800/alerts.")],
    token_file: Annotated[Path, typer.Option(
        envvar="TUNELOOP_ALERT_WEBHOOK_TOKEN_FILE", help="File holding the webhook's bearer token.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of standard output.")] = None,
) -> None:
    """Render monitoring/alertmanager/alertmanager.yml with the adapter's webhook and its bearer token file."""
    from monitoring.alerting import render_alertmanager_config
    from monitoring.errors import MonitorError
    from tuneloop.cli import fail

    try:
        text = render_alertmanager_config(webhook_url, token_file)
    except MonitorError as exc:
        raise fail(str(exc)) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


def monitor(
    config: Annotated[
        str | None, typer.Option("--config", help="YAML settings file (also TUNELOOP_CONFIG).")
    ] = None,
    registry: Annotated[
        str | None, typer.Option("--registry", help="Registry root (also TUNELOOP_REGISTRY).")
    ] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", help="Kafka brokers.")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address of /metrics and /reports.")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port of /metrics and /reports (0: any free).")
    ] = None,
) -> None:
    """Watch live predictions for drift against each model version's reference sample."""
    from prometheus_client import REGISTRY, disable_created_metrics

    from monitoring.consume import ConsumeLoop, EventLogDriftSink
    from monitoring.errors import MonitorError
    from monitoring.metrics import MonitorMetrics
    from monitoring.monitor import DriftMonitor
    from monitoring.reference import RegistryReferences
    from monitoring.reports import ReportStore
    from monitoring.server import MonitorServer
    from tuneloop.cli import fail, settings_from_options
    from tuneloop.events.client_config import ensure_topics
    from tuneloop.events.consumer import EventConsumer
    from tuneloop.events.producer import EventLog
    from tuneloop.registry import Registry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_options(config, registry)
    if bootstrap_servers:
        settings.kafka.bootstrap_servers = bootstrap_servers
    if host:
        settings.monitor.host = host
    if port is not None:
        settings.monitor.port = port
    disable_created_metrics()  # *_created series double the series count for nothing a dashboard uses

    kafka = settings.kafka  # its EventLog spools to a folder of its own under spool_dir, as every process does
    try:
        ensure_topics(kafka)
    except Exception as exc:  # the consumer retries; topics may be created by the service first
        log.warning("could not make sure the topics exist: %s", exc)
    try:
        metrics = MonitorMetrics()
        reports = ReportStore(settings.monitor.reports_kept)
        event_log = EventLog(kafka, source="tuneloop-monitor")
        drift_monitor = DriftMonitor(
            settings.monitor,
            RegistryReferences(Registry(settings.registry)),
            metrics=metrics,
            reports=reports,
            events=EventLogDriftSink(event_log),
        )
    except MonitorError as exc:
        raise fail(str(exc)) from None
    event_log.start()
    consumer = EventConsumer(kafka, ["predictions"], group_id=settings.monitor.consumer_group)
    server = MonitorServer(
        [metrics.registry, REGISTRY], reports, settings.monitor.host, settings.monitor.port
    )
    server.start()
    log.info(
        "drift monitor: /metrics and /reports on %s:%d; signals %s; consuming %s as %s",
        settings.monitor.host,
        server.port,
        ", ".join(s.name for s in drift_monitor.signals),
        kafka.predictions_topic,
        settings.monitor.consumer_group,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        ConsumeLoop(drift_monitor).run(consumer, stop)
    finally:
        consumer.close()
        event_log.close()  # delivers or spools the last drift events
        server.stop()


if __name__ == "__main__":  # `python -m monitoring.cli monitor …`, before the entry point is installed
    standalone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    standalone.callback()(lambda: None)  # keep `monitor` a subcommand, as under `tuneloop`
    register(standalone)
    standalone()
