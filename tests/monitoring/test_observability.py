"""The monitor's HTTP server; dashboards and alerts against a real Prometheus scraping real endpoints."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "tuneloop.json"
RULES = ROOT / "monitoring" / "prometheus" / "rules.yml"
MONITOR_FAMILIES = {
    "tuneloop_drift_score",
    "tuneloop_drift_threshold",
    "tuneloop_drift_detected",
    "tuneloop_drift_window_fill",
    "tuneloop_drift_last_evaluation_timestamp_seconds",
    "tuneloop_drift_evaluation_duration_seconds",
    "tuneloop_drift_window_predictions",
    "tuneloop_drift_not_enough_data",
    "tuneloop_monitor_window_seconds",
    "tuneloop_monitor_window_size",
    "tuneloop_monitor_consumer_lag",
    "tuneloop_monitor_consumer_lag_seconds",
}


def metric_names_in_docs() -> set[str]:
    return set(re.findall(r"^\| `(tuneloop_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M))


# ---------------------------------------------------------------------- the monitor's own server
def test_metrics_endpoint_serves_the_documented_families(running_monitor):
    monitor, server = running_monitor
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    names = {n.removesuffix("_total") for n in families if not n.endswith("_created")}
    assert MONITOR_FAMILIES <= names
    assert {n for n in names if n.startswith("tuneloop_")} <= metric_names_in_docs() | {
        n.removesuffix("_total") for n in metric_names_in_docs()
    }
    detected = {s.labels["signal"]: s.value for s in families["tuneloop_drift_detected"].samples}
    assert set(detected) == {"embedding", "prediction", "confidence", "text_length", "text_oov"}
    assert detected["embedding"] == 1.0  # the synthetic stream shifted its embeddings
    assert monitor.is_drifting("v1")


def test_reports_index_and_pages(running_monitor):
    monitor, server = running_monitor
    base = f"http://127.0.0.1:{server.port}"
    index = httpx.get(f"{base}/reports", params={"format": "json"}, timeout=5).json()
    assert index and index[0]["model_version"] == "v1" and "embedding" in index[0]["signals"]
    assert len(index) <= monitor.settings.reports_kept
    assert "<table" in httpx.get(f"{base}/reports", timeout=5).text
    page = httpx.get(f"{base}/reports/{index[0]['id']}", timeout=30)  # httpx asks for gzip and inflates it
    assert page.status_code == 200 and page.headers["content-encoding"] == "gzip"
    assert page.text.count("Drift detection method") >= 5  # Evidently's widgets: every signal, every PC
    assert httpx.get(f"{base}/reports/nope", timeout=5).status_code == 404


# ---------------------------------------------------------------------- Prometheus, dashboards, alerts
def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def grafana_to_promql(expr: str) -> str:
    # What Grafana substitutes before it sends the query (all versions selected; a rate window the 1 s
    # scrape interval fills).
    return expr.replace("$__rate_interval", "15s").replace('"$model_version"', '".*"')


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"] if "alert" in r]


def without_thresholds(expr: str) -> str:
    """The alert's condition with every comparison against a number made a ``bool`` comparison.

    An alert expression returns series only while it fires; the bool form returns them whenever the series it
    watches exist, so "returns data" checks the expression's names and labels against what is scraped.
    """
    return re.sub(r"(==|!=|>=|<=|>|<)\s*(?=[0-9])", r"\1 bool ", expr)


@pytest.fixture(scope="module")
def scraped(prometheus):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        up = prometheus.query("up")["data"]["result"]
        have = prometheus.query(
            "count(tuneloop_drift_score) and count(rate(tuneloop_requests_total[15s]) > 0)"
        )
        if len(up) == 3 and all(s["value"][1] == "1" for s in up) and have["data"]["result"]:
            time.sleep(3)  # a few more scrapes so every rate window holds two samples
            return prometheus
        time.sleep(0.5)
    pytest.fail(f"targets not scraped: {prometheus.query('up')}")


def test_rules_are_loaded_and_healthy(scraped):
    groups = httpx.get(f"{scraped.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {a for a, _ in alert_expressions()}
    time.sleep(2)  # at least one evaluation round after loading
    rules = {
        r["name"]: r
        for g in httpx.get(f"{scraped.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        for r in g["rules"]
    }
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


@pytest.mark.parametrize(("title", "expr"), dashboard_expressions(), ids=lambda v: v[:60])
def test_dashboard_panel_returns_data(scraped, title, expr):
    answer = scraped.query(grafana_to_promql(expr))
    assert answer["status"] == "success", answer
    assert answer["data"]["result"], f"panel {title!r}: {expr} returned no data"


@pytest.mark.parametrize(("alert", "expr"), alert_expressions(), ids=lambda v: v[:40])
def test_alert_expression_evaluates_and_sees_its_series(scraped, alert, expr):
    answer = scraped.query(expr)
    assert answer["status"] == "success", answer
    watched = scraped.query(without_thresholds(expr))
    assert watched["status"] == "success", watched
    assert watched["data"]["result"], f"{alert}: {without_thresholds(expr)} returned no data"


def test_drift_alert_is_pending_or_firing(scraped):
    """The monitor raised drift; Prometheus must see the alert condition true (pending: `for` runs)."""
    alerts = httpx.get(f"{scraped.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    drift = [a for a in alerts if a["labels"]["alertname"] == "TuneloopDriftDetected"]
    assert any(
        a["labels"]["signal"] == "embedding" and a["labels"]["model_version"] == "v1" for a in drift
    ), alerts


def test_grafana_provisioning_points_at_the_dashboard_datasource():
    provisioning = ROOT / "monitoring" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert used <= uids
    providers = yaml.safe_load((provisioning / "dashboards" / "tuneloop.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
