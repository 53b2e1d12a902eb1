"""The manifests against the code they deploy: ports and probe routes, settings names, metric names, the
alert rules, the Kafka topics and bootstrap address, the webhook, the drain time."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import ROOT
from tests.deploy.manifests import container, containers, find, pod_specs
from tuneloop.settings import SHORT_ENV_NAMES, Settings, load_settings

RULES = ROOT / "monitoring" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "tuneloop.json"
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
# Read by settings.py itself, not a field: it names the YAML settings file.
CONFIG_FILE_VARIABLE = "TUNELOOP_CONFIG"


# ---------------------------------------------------------------------------------------------- settings
def env_of(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str | None]:
    """The container's variables: literal values, None for those from Secrets, ConfigMaps' through envFrom."""
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for var in c.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def container_settings(objects: list[dict[str, Any]], deployment: str, name: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the container's process would build: its settings file (from the ConfigMap) and its
    environment (variables from Secrets left out)."""
    c = container(objects, deployment, name)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(find(objects, "ConfigMap", mounted_configmap(objects, deployment, c,
                                                                         "/etc/tuneloop/settings"))
                             ["data"]["settings.yaml"])
    for var in [v for v in list(__import__("os").environ) if v.startswith("TUNELOOP_")]:
        monkeypatch.delenv(var)
    for var, value in env_of(objects, c).items():
        if value is not None and var != CONFIG_FILE_VARIABLE:
            monkeypatch.setenv(var, value)
    assert env_of(objects, c)[CONFIG_FILE_VARIABLE] == "/etc/tuneloop/settings/settings.yaml"
    return load_settings(settings_file)


def mounted_configmap(objects: list[dict[str, Any]], deployment: str, c: dict[str, Any], path: str) -> str:
    pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == path)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume["configMap"]["name"]


def is_settings_field(variable: str) -> bool:
    if variable in SHORT_ENV_NAMES or variable == CONFIG_FILE_VARIABLE:
        return True
    model: type[BaseModel] | None = Settings
    for part in variable.removeprefix("TUNELOOP_").lower().split("__"):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if inspect.isclass(annotation) and issubclass(annotation, BaseModel) else None
    return True


def unknown_keys(values: dict[str, Any], model: type[BaseModel], where: str = "") -> list[str]:
    problems = []
    for key, value in values.items():
        if key not in model.model_fields:
            problems.append(where + key)
            continue
        annotation = model.model_fields[key].annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel) and isinstance(value, dict):
            problems += unknown_keys(value, annotation, f"{where}{key}.")
    return problems


def test_every_tuneloop_variable_is_a_setting(overlay_objects: list[dict[str, Any]]) -> None:
    variables = set()
    for _, pod in pod_specs(overlay_objects):
        for c in containers(pod):
            variables |= {v for v in env_of(overlay_objects, c) if v.startswith("TUNELOOP_")}
    for bentofile in ROOT.glob("bentofile*.yaml"):
        variables |= {e["name"] for e in yaml.safe_load(bentofile.read_text()).get("envs", [])
                      if e["name"].startswith("TUNELOOP_")}
    assert "TUNELOOP_ADAPTER__STORE_URL" in variables and "TUNELOOP_REGISTRY" in variables
    assert sorted(v for v in variables if not is_settings_field(v)) == []
    assert not is_settings_field("TUNELOOP_ADAPTER__STORE_URI")  # the check tells a field from a near miss


def test_the_settings_file_and_the_policy_are_valid(overlay_objects: list[dict[str, Any]], tmp_path: Path) -> None:
    from adapter.loop.policy import AdapterPolicy

    settings_text = find(overlay_objects, "ConfigMap", next(
        o["metadata"]["name"] for o in overlay_objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tuneloop-settings")))["data"]["settings.yaml"]
    assert unknown_keys(yaml.safe_load(settings_text), Settings) == []
    (tmp_path / "settings.yaml").write_text(settings_text)
    load_settings(tmp_path / "settings.yaml")
    policy = next(o for o in overlay_objects
                  if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tuneloop-policy"))
    (tmp_path / "policy.yaml").write_text(policy["data"]["policy.yaml"])
    assert AdapterPolicy.load(tmp_path / "policy.yaml").rollback.service_metrics_url.endswith(":3000/metrics")


# ---------------------------------------------------------------------------------------------- ports, probes
def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def probe_paths(c: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {kind: (c[kind]["httpGet"]["path"], port_number(c, c[kind]["httpGet"]["port"]))
            for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in c}


def test_service_ports_and_probes_are_the_services(overlay_objects: list[dict[str, Any]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.routing import Match

    from service import http_app
    from service.service import Tuneloop

    settings = container_settings(overlay_objects, "tuneloop", "service", tmp_path, monkeypatch)
    c = container(overlay_objects, "tuneloop", "service")
    assert port_number(c, "http") == settings.serving.port
    assert port_number(c, "grpc") == settings.serving.grpc_port
    Tuneloop.inject_config()
    # BentoML's own routes (/livez, /readyz) first, then the app mounted at the root (/v2/health/*, /metrics).
    routes = [*ServiceAppFactory(Tuneloop, is_main=True).routes, *http_app.app.routes]

    def routed(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
        return any(route.matches(scope)[0] == Match.FULL for route in routes)

    probes = probe_paths(c)
    assert set(probes) == {"startupProbe", "livenessProbe", "readinessProbe"}
    for kind, (path, port) in probes.items():
        assert routed(path), f"{kind} {path} is no route of the service"
        assert port == settings.serving.port
    assert routed("/metrics") and not routed("/v2/health/alive")  # the scraped path; a near miss is refused


def test_adapter_ports_and_probe_answer(overlay_objects: list[dict[str, Any]], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from adapter.loop.policy import AdapterPolicy
    from adapter.loop.service import AdapterService

    settings = container_settings(overlay_objects, "tuneloop", "adapter", tmp_path, monkeypatch)
    c = container(overlay_objects, "tuneloop", "adapter")
    assert c["restartPolicy"] == "Always"  # a native sidecar
    assert port_number(c, "adapter-http") == settings.adapter.port
    assert port_number(c, "adapter-admin") == settings.adapter.admin_port
    assert set(probe_paths(c)) == {"livenessProbe"}  # readiness would couple the service to the adapter
    # A real adapter on a local store and registry (the cluster's are PostgreSQL and object storage).
    local = settings.model_copy(update={
        "registry": str(tmp_path / "registry"),
        "adapter": settings.adapter.model_copy(update={"store_url": f"sqlite:///{tmp_path / 'labels.db'}",
                                                       "webhook_token_file": None, "admin_tokens_file": None,
                                                       "session_secret_file": None, "workdir": tmp_path})})
    client = TestClient(AdapterService(local, AdapterPolicy()).app())
    for path, port in probe_paths(c).values():
        assert port == settings.adapter.port
        assert client.get(path).status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.post("/alerts", json={}).status_code == 401  # the webhook the AlertmanagerConfig calls


def test_monitor_ports_and_probes_answer(overlay_objects: list[dict[str, Any]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from monitoring.metrics import MonitorMetrics
    from monitoring.reports import ReportStore
    from monitoring.server import MonitorServer

    settings = container_settings(overlay_objects, "tuneloop-monitor", "monitor", tmp_path, monkeypatch)
    c = container(overlay_objects, "tuneloop-monitor", "monitor")
    assert port_number(c, "monitor-http") == settings.monitor.port
    server = MonitorServer([MonitorMetrics().registry], ReportStore(2), "127.0.0.1", 0)
    server.start()
    try:
        for path, port in [*probe_paths(c).values(), ("/metrics", settings.monitor.port)]:
            assert port == settings.monitor.port
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as answer:
                assert answer.status == 200
    finally:
        server.stop()


def test_services_and_scrapes_reach_named_container_ports(overlay_objects: list[dict[str, Any]]) -> None:
    named = {}
    for _, pod in pod_specs(overlay_objects):
        for c in containers(pod):
            named |= {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    services = [o for o in overlay_objects if o["kind"] == "Service"]
    for service in services:
        for port in service["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"], f"{service['metadata']['name']} {port['name']}"
    scraped = {p["name"] for s in services if s["metadata"]["labels"].get("tuneloop.io/scrape") == "true"
               for p in s["spec"]["ports"]}
    monitor = find(overlay_objects, "ServiceMonitor", "tuneloop")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == scraped
    grpc = next(p for p in find(overlay_objects, "Service", "tuneloop")["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "kubernetes.io/h2c"


# ---------------------------------------------------------------------------------------------- termination
def test_the_grace_period_covers_prestop_and_the_services_drain(overlay_objects: list[dict[str, Any]]) -> None:
    from service.batching import MicroBatcher
    from service.runtime import ServingRuntime
    from service.service import Tuneloop
    from service.swap import ModelManager
    from tuneloop.events.producer import EventLog

    def literal(function: Any, keyword: str) -> float:
        return float(re.search(rf"{keyword}=(\d+(?:\.\d+)?)", inspect.getsource(function)).group(1))

    # In-flight requests may run for BentoML's traffic timeout; then the shutdown hook stops gRPC, drains the
    # batcher, stops the registry watcher and flushes the event log, one after the other.
    drain = (Tuneloop.config["traffic"]["timeout"] + literal(ServingRuntime.stop, "grace")
             + inspect.signature(MicroBatcher.stop).parameters["timeout"].default
             + literal(ModelManager.stop, "timeout")
             + inspect.signature(EventLog.close).parameters["timeout"].default)
    pod = find(overlay_objects, "Deployment", "tuneloop")["spec"]["template"]["spec"]
    service = container(overlay_objects, "tuneloop", "service")
    pre_stop = service["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5  # long enough for the endpoints to forget the pod before the service stops taking work
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain


# ---------------------------------------------------------------------------------------------- metrics, rules
def exported_series() -> set[str]:
    """Every series name the code's metrics can expose."""
    import adapter.loop.metrics  # noqa: F401
    import service.metrics  # noqa: F401
    import tuneloop.events.consumer  # noqa: F401
    import tuneloop.events.metrics  # noqa: F401
    import tuneloop.events.rejections  # noqa: F401
    import tuneloop.supervision  # noqa: F401
    from prometheus_client import REGISTRY

    from monitoring.metrics import MonitorMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
                "summary": ("_count", "_sum", "")}
    names = set()
    for registry in (REGISTRY, MonitorMetrics().registry):
        for family in registry.collect():
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def used_series(text: str) -> set[str]:
    return set(re.findall(r"\btuneloop_[a-z0-9_]+\b", text))


def test_every_series_in_rules_and_dashboard_is_exported() -> None:
    exported = exported_series()
    rules = {s for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
             for s in used_series(r["expr"])}
    dashboard = used_series(" ".join(re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', DASHBOARD.read_text())))
    assert rules and dashboard
    assert sorted((rules | dashboard) - exported) == []


def test_the_prometheus_rule_is_rules_yml(overlay_objects: list[dict[str, Any]]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_k8s_monitoring.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rule = find(overlay_objects, "PrometheusRule", "tuneloop")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    dashboard = find(overlay_objects, "ConfigMap", "tuneloop-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["tuneloop.json"] == DASHBOARD.read_text()
    uid = yaml.safe_load(find(overlay_objects, "ConfigMap", "tuneloop-grafana-datasource")["data"]
                         ["tuneloop-datasource.yaml"])["datasources"][0]["uid"]
    assert f'"uid": "{uid}"' in DASHBOARD.read_text()


def test_drift_alerts_reach_the_adapters_webhook_with_its_token(overlay_objects: list[dict[str, Any]]) -> None:
    shipped = yaml.safe_load(ALERTMANAGER.read_text())
    adapter_route = next(r for r in shipped["route"]["routes"] if r["receiver"] == "tuneloop-adapter")
    config = find(overlay_objects, "AlertmanagerConfig", "tuneloop-adapter")["spec"]
    route = config["route"]
    as_text = [f'{m["name"]} {m["matchType"]} "{m["value"]}"' for m in route["matchers"]]
    assert as_text == adapter_route["matchers"]
    assert route["groupBy"] == adapter_route["group_by"]
    assert re.match("TuneloopDriftDetected", route["matchers"][0]["value"])
    webhook = next(r for r in config["receivers"] if r["name"] == route["receiver"])["webhookConfigs"][0]
    host, port, path = re.fullmatch(r"http://([a-z0-9-]+)\.tuneloop\.svc:(\d+)(/\S+)", webhook["url"]).groups()
    service = find(overlay_objects, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]} and path == "/alerts"
    # The Secret Alertmanager reads the token from is the one mounted where the adapter reads it.
    credentials = webhook["httpConfig"]["authorization"]["credentials"]
    settings = yaml.safe_load(find(overlay_objects, "ConfigMap", mounted_configmap(
        overlay_objects, "tuneloop", container(overlay_objects, "tuneloop", "adapter"), "/etc/tuneloop/settings"))
        ["data"]["settings.yaml"])
    token_file = Path(settings["adapter"]["webhook_token_file"])
    adapter = container(overlay_objects, "tuneloop", "adapter")
    mount = next(m for m in adapter["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    pod = find(overlay_objects, "Deployment", "tuneloop")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert (volume["secret"]["secretName"], token_file.name) == (credentials["name"], credentials["key"])


# ---------------------------------------------------------------------------------------------- kafka
def test_kafka_topics_and_bootstrap_are_the_settings(overlay_objects: list[dict[str, Any]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settings = container_settings(overlay_objects, "tuneloop", "service", tmp_path, monkeypatch)
    kafka = next(o for o in overlay_objects if o["kind"] == "Kafka")
    listener = next(li for li in kafka["spec"]["kafka"]["listeners"] if li["name"] == "plain")
    assert settings.kafka.bootstrap_servers == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    assert settings.kafka.security_protocol == ("SSL" if listener["tls"] else "PLAINTEXT")
    topics = {o["spec"]["topicName"]: o for o in overlay_objects if o["kind"] == "KafkaTopic"}
    assert set(topics) == {settings.kafka.predictions_topic, settings.kafka.feedback_topic,
                           settings.kafka.model_events_topic}
    pools = [o for o in overlay_objects if o["kind"] == "KafkaNodePool"]
    for obj in [*topics.values(), *pools]:
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert all(t["spec"]["replicas"] <= sum(p["spec"]["replicas"] for p in pools) for t in topics.values())
    # Every replica's adapter is a consumer of one group: more replicas than partitions would idle.
    hpa = find(overlay_objects, "HorizontalPodAutoscaler", "tuneloop")
    for topic in (settings.kafka.predictions_topic, settings.kafka.feedback_topic):
        assert hpa["spec"]["maxReplicas"] <= topics[topic]["spec"]["partitions"]
    assert settings.adapter.consumer_group != settings.monitor.consumer_group


def test_every_secret_and_configmap_a_pod_reads_is_declared(overlay_objects: list[dict[str, Any]]) -> None:
    declared = {(o["kind"], o["metadata"]["name"]) for o in overlay_objects}
    wanted = set()
    for _, pod in pod_specs(overlay_objects):
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                wanted.add(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                wanted.add(("ConfigMap", volume["configMap"]["name"]))
        for c in containers(pod):
            for source in c.get("envFrom", []):
                ref = source.get("secretRef") or source.get("configMapRef")
                wanted.add(("Secret" if "secretRef" in source else "ConfigMap", ref["name"]))
            for var in c.get("env", []):
                if "secretKeyRef" in var.get("valueFrom", {}):
                    wanted.add(("Secret", var["valueFrom"]["secretKeyRef"]["name"]))
    assert sorted(wanted - declared) == []
