"""The alert rules and the Alertmanager routing, checked by the real promtool and amtool."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
WEBHOOK = "http://adapter.example:8800/alerts"


@pytest.fixture(scope="module")
def alertmanager_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped configuration as `tuneloop alertmanager-config` renders it for a deployment."""
    folder = tmp_path_factory.mktemp("alertmanager")
    (folder / "token").write_text("a-token")
    done = subprocess.run([sys.executable, "-m", "monitoring.cli", "alertmanager-config", "--webhook-url", WEBHOOK,
                           "--token-file", str(folder / "token"), "--out", str(folder / "alertmanager.yml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return folder / "alertmanager.yml"


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


def test_amtool_check_config(alertmanager_config: Path):
    result = run(tool("amtool"), "check-config", str(alertmanager_config))
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
def test_alertmanager_routes(alertmanager_config: Path, labels, receivers):
    result = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={alertmanager_config}",
        f"--verify.receivers={receivers}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_receiver_is_the_adapter_webhook_with_its_token(alertmanager_config: Path):
    import yaml

    config = yaml.safe_load(alertmanager_config.read_text())
    adapter = next(r for r in config["receivers"] if r["name"] == "tuneloop-adapter")
    webhook = adapter["webhook_configs"][0]
    assert webhook["url"] == WEBHOOK and webhook["send_resolved"] is True
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert Path(authorization["credentials_file"]).read_text() == "a-token"


def test_the_shipped_file_names_no_deployment_address():
    from monitoring.alerting import TEMPLATE

    text = TEMPLATE.read_text()
    assert "${TUNELOOP_ALERT_WEBHOOK_URL}" in text and "http://" not in text.split("receivers:", 1)[1]


def test_a_bad_webhook_url_is_one_clear_line(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "monitoring.cli", "alertmanager-config", "--webhook-url",
                           "adapter:8800", "--token-file", str(tmp_path / "t")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "must be http(s)://" in done.stderr and "Traceback" not in done.stderr
