from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", params=["default", "demo"])
def scenario(request, kafka_broker, tmp_path_factory):
    """The reference sample and the served traffic of a MiniLM version trained by `tuneloop train`, at the
    default validation fraction and at the demo's."""
    from tests.monitoring.corpus import served_scenario

    trained = request.getfixturevalue({"default": "minilm_amazon", "demo": "minilm_amazon_demo"}[request.param])
    return served_scenario(trained, tmp_path_factory.mktemp(f"served-{request.param}"),
                           kafka_broker.bootstrap_servers)


@pytest.fixture(scope="session")
def running_monitor(kafka_broker, tmp_path_factory):
    """A real DriftMonitor + its HTTP server, fed in-domain and then drifted synthetic traffic through a real
    broker by its own consume loop."""
    from tests.fixtures.broker import isolated_settings
    from tests.monitoring.stack import consumed_monitor

    # One partition: the windows close in the order the test sends them (partitions are read interleaved).
    kafka = isolated_settings(kafka_broker.bootstrap_servers, tmp_path_factory.mktemp("monitor-spool"), partitions=1)
    monitor, server = consumed_monitor(kafka)
    yield monitor, server
    server.stop()


@pytest.fixture(scope="session")
def service_metrics_endpoint(served_registry, tmp_path_factory):
    """host:port of a real ``tuneloop serve`` (HTTP and gRPC, event log on a real broker), kept busy
    with good and bad requests so that every series the dashboards and alerts read exists."""
    from tests.monitoring.stack import drive_service_traffic
    from tests.server_process import ServerProcess
    from tuneloop.events.broker import TansuBroker

    folder = tmp_path_factory.mktemp("observed-service")
    with TansuBroker(log_path=folder / "tansu.log") as broker:
        env = {"TUNELOOP_KAFKA__ENABLED": "true", "TUNELOOP_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               "TUNELOOP_SPOOL_DIR": str(folder / "spool")}
        with ServerProcess(served_registry, folder / "server.log", env=env) as server:
            with drive_service_traffic(server):
                yield f"127.0.0.1:{server.http_port}"


@pytest.fixture(scope="session")
def adapter_metrics_endpoint(served_registry, kafka_broker, tmp_path_factory):
    """host:port of a real ``tuneloop adapt`` (default policy, SQLite store) over a copy of the served registry:
    the series its alerts watch exist from the start, at 0."""
    import shutil

    from tests.fixtures.broker import isolated_settings
    from tests.monitoring.stack import AdapterProcess

    folder = tmp_path_factory.mktemp("observed-adapter")
    registry = folder / "registry"
    shutil.copytree(served_registry, registry)
    (folder / "policy.yaml").write_text("{}\n")
    (folder / "token").write_text("observed-adapter-token")
    kafka = isolated_settings(kafka_broker.bootstrap_servers, folder / "spool")
    with AdapterProcess(folder, registry, kafka, f"sqlite:///{folder / 'labels.db'}", folder / "policy.yaml",
                        folder / "token") as adapter:
        yield f"127.0.0.1:{adapter.port}"


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory, running_monitor, service_metrics_endpoint, adapter_metrics_endpoint):
    from tests.monitoring.stack import PrometheusProcess

    if not Path("/usr/bin/prometheus").is_file():
        pytest.fail("prometheus is missing: run scripts/install-debian-packages.sh as root")
    _, server = running_monitor
    prom = PrometheusProcess(
        tmp_path_factory.mktemp("prometheus"),
        {"tuneloop-monitor": f"127.0.0.1:{server.port}", "tuneloop-service": service_metrics_endpoint,
         "tuneloop-adapter": adapter_metrics_endpoint},
    ).start()
    yield prom
    prom.stop()
