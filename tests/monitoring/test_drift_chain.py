"""The drift chain the product is, end to end on real parts:

    tuneloop serve → Kafka (Tansu) → tuneloop monitor → Prometheus evaluating monitoring/prometheus/rules.yml
    → TuneloopDriftDetected firing → Alertmanager routing with monitoring/alertmanager/alertmanager.yml
    → the webhook (here a recording HTTP server; the adapter's own in its tests), with its bearer token.

The model is MiniLM fine-tuned by `tuneloop train` on the amazon sentences; the traffic is 200 of its held-out
amazon sentences, then yelp reviews. Only the waits are shortened (the rules' `for:` and Alertmanager's group
timers, which are minutes in production); every expression, label, route and receiver is the shipped one.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from monitoring.alerting import render_alertmanager_config
from tests.conftest import YELP, read_sentences
from tests.fixtures.broker import isolated_settings, kafka_env
from tests.monitoring.stack import ROOT, AlertmanagerProcess, MonitorProcess, PrometheusProcess
from tests.server_process import ServerProcess
from tuneloop.events.client_config import ensure_topics

TOKEN = "drift-chain-token"


class WebhookReceiver:
    """An HTTP server that records what Alertmanager posts to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                 "payload": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alertname: str) -> list[dict]:
        return [r for r in self.received if r["payload"].get("status") == "firing"
                and any(a["labels"].get("alertname") == alertname for a in r["payload"]["alerts"])]

    def close(self) -> None:
        self.server.shutdown()


def shortened_rules(folder: Path) -> Path:
    """rules.yml with every `for:` cut to 2 s: the same expressions, labels and annotations."""
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def shortened_routing(config: str) -> str:
    """The rendered Alertmanager configuration with its group timers cut to seconds."""
    document = yaml.safe_load(config)
    routes = [document["route"]]
    while routes:
        route = routes.pop()
        for timer in ("group_wait", "group_interval"):
            if timer in route:
                route[timer] = "1s"
        routes.extend(route.get("routes", []))
    document["route"].update(group_wait="1s", group_interval="1s")
    return yaml.safe_dump(document)


@pytest.mark.slow
def test_yelp_traffic_after_amazon_reaches_the_adapter_webhook_as_a_drift_alert(minilm_amazon, kafka_broker,
                                                                                 tmp_path: Path) -> None:
    registry = minilm_amazon.registry_copy(tmp_path / "registry")
    kafka = isolated_settings(kafka_broker.bootstrap_servers, tmp_path / "spool", partitions=1)
    ensure_topics(kafka)
    token_file = tmp_path / "webhook-token"
    token_file.write_text(TOKEN)
    receiver = WebhookReceiver()
    config = shortened_routing(render_alertmanager_config(receiver.url, token_file))
    for folder in ("alertmanager", "prometheus", "monitor"):
        (tmp_path / folder).mkdir()
    amazon = minilm_amazon.data.test.texts[:200]
    yelp = [text for text, _ in read_sentences(YELP)][:400]
    try:
        with ServerProcess(registry, tmp_path / "server.log", grpc=False, env=kafka_env(kafka)) as server, \
                MonitorProcess(tmp_path / "monitor", registry, kafka) as monitor, \
                AlertmanagerProcess(tmp_path / "alertmanager", config) as alertmanager, \
                PrometheusProcess(tmp_path / "prometheus", {"tuneloop-monitor": f"127.0.0.1:{monitor.port}"},
                                  rule_files=[shortened_rules(tmp_path / "prometheus")],
                                  alertmanager=f"127.0.0.1:{alertmanager.port}") as prometheus, \
                httpx.Client(base_url=server.url, timeout=60) as http:
            for texts in (amazon, yelp):
                for start in range(0, len(texts), 8):
                    assert http.post("/classify", json={"texts": texts[start:start + 8]}).status_code == 200
            deadline = time.monotonic() + 180
            while not receiver.firing("TuneloopDriftDetected") and time.monotonic() < deadline:
                time.sleep(0.5)
            detected = prometheus.query("tuneloop_drift_detected == 1")["data"]["result"]
            alerts = prometheus.query('ALERTS{alertname="TuneloopDriftDetected"}')["data"]["result"]
            logs = f"monitor: {monitor.tail()}\nalertmanager: {alertmanager.tail()}"
    finally:
        receiver.close()
    notifications = receiver.firing("TuneloopDriftDetected")
    assert notifications, (detected, alerts, logs)
    notification = notifications[0]
    assert notification["path"] == "/alerts" and notification["authorization"] == f"Bearer {TOKEN}"
    alert = next(a for a in notification["payload"]["alerts"] if a["labels"]["alertname"] == "TuneloopDriftDetected")
    assert alert["labels"]["model_version"] == minilm_amazon.version and alert["labels"]["severity"] == "warning"
    assert alert["labels"]["signal"] in {"embedding", "prediction", "confidence", "text_length", "text_oov"}
    # Grouped by model version, as the route says: one drifting version is one notification to act on.
    assert notification["payload"]["groupLabels"] == {"alertname": "TuneloopDriftDetected",
                                                      "model_version": minilm_amazon.version}
    assert notification["payload"]["receiver"] == "tuneloop-adapter"
