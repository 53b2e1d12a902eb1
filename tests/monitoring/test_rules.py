"""The alert rules and the Alertmanager routing, checked by the real promtool and amtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-debian-packages.sh as root")
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", str(PROMETHEUS / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests():
    result = run(tool("promtool"), "test", "rules", "rules_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_summary_description_runbook():
    import yaml

    rules = [r for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"] for r in g["rules"]]
    runbooks = (ROOT / "docs" / "runbooks.md").read_text().lower()
    for rule in rules:
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert f"## {rule['alert'].lower()}" in runbooks and anchor == rule["alert"].lower(), rule["alert"]


def test_amtool_check_config():
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (
            ["alertname=TuneloopDriftDetected", "model_version=v3", "signal=embedding"],
            "tuneloop-adapter,operators",
        ),
        (["alertname=TuneloopModelStale", "model_version=v3"], "tuneloop-adapter,operators"),
        (["alertname=TuneloopHighErrorRate"], "operators"),
        (["alertname=TuneloopEventsDropped"], "operators"),
    ],
)
def test_alertmanager_routes(labels, receivers):
    result = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receivers}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_receiver_is_the_adapter_webhook():
    import yaml

    config = yaml.safe_load(ALERTMANAGER.read_text())
    adapter = next(r for r in config["receivers"] if r["name"] == "tuneloop-adapter")
    assert adapter["webhook_configs"][0]["url"].endswith("/alerts")
    assert adapter["webhook_configs"][0]["send_resolved"] is True
