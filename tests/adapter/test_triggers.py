"""What asks for a retraining: Alertmanager's webhook (token and payload checked), drift events, label volume,
a schedule, and `tuneloop retrain`."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from adapter.loop.policy import AdapterPolicy, TriggerPolicy
from adapter.loop.service import AdapterService
from adapter.loop.store import LabelStore
from adapter.loop import metrics
from adapter.loop.triggers import AlertNotification, Triggers
from tests.conftest import ROOT
from tuneloop.events.schemas import ModelEvent
from tuneloop.settings import load_settings

TOKEN = "s3cret-webhook-token"


def notification(status: str = "firing", alertname: str = "TuneloopDriftDetected", **labels: str) -> dict:
    return {"version": "4", "status": status, "receiver": "tuneloop-adapter", "groupKey": "{}:{}",
            "groupLabels": {"alertname": alertname, "model_version": "v1"},
            "alerts": [{"status": status, "labels": {"alertname": alertname, "model_version": "v1", **labels},
                        "annotations": {"summary": "drift"}, "startsAt": "2026-11-30T01:00:00Z",
                        "fingerprint": "abc"}]}


@pytest.fixture
def service(tmp_path: Path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    settings = load_settings(registry=str(tmp_path / "registry"), adapter={
        "store_url": f"sqlite:///{tmp_path / 'labels.db'}", "webhook_token_file": str(tmp_path / "token")})
    return AdapterService(settings, AdapterPolicy())


async def post(service: AdapterService, body, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=service.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://adapter") as client:
        if isinstance(body, dict):
            return await client.post("/alerts", json=body, headers=headers)
        return await client.post("/alerts", content=body, headers=headers)


@pytest.mark.anyio
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
async def test_the_webhook_refuses_a_missing_or_wrong_token(service, authorization) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = await post(service, notification(), **headers)
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in answer.text
    assert service.store.waiting_triggers() == []


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"not json", {"version": "4"}, {**notification(), "alerts": []},
                                  {**notification(), "status": "maybe"}])
async def test_the_webhook_refuses_what_is_not_an_alertmanager_notification(service, body) -> None:
    answer = await post(service, body, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 400 and "not an Alertmanager notification" in answer.json()["error"]


@pytest.mark.anyio
async def test_a_firing_drift_alert_is_recorded_as_a_trigger_and_a_resolved_one_is_not(service) -> None:
    fired = await post(service, notification(signal="embedding"), Authorization=f"Bearer {TOKEN}")
    assert fired.status_code == 202 and len(fired.json()["triggers"]) == 1
    resolved = await post(service, notification("resolved"), Authorization=f"Bearer {TOKEN}")
    other = await post(service, notification(alertname="TuneloopHighErrorRate"), Authorization=f"Bearer {TOKEN}")
    assert resolved.json() == other.json() == {"triggers": []}
    (trigger,) = service.store.waiting_triggers()
    assert (trigger.kind, trigger.detail) == ("drift_alert", {"model_version": "v1", "signals": ["embedding"]})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_drift_events_volume_and_schedule(tmp_path: Path) -> None:
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    started = datetime.now(timezone.utc) - timedelta(hours=2)
    triggers = Triggers(store, TriggerPolicy(label_volume=100, schedule="0 * * * *"), started=started)
    drift = ModelEvent(kind="drift_started", version="v1", transition="embedding", actor="tuneloop-monitor")
    assert triggers.on_model_event(drift) is not None
    assert triggers.on_model_event(drift.model_copy(update={"kind": "drift_ended"})) is None
    assert triggers.check_volume(99) is None
    assert triggers.check_volume(100) is not None and triggers.check_volume(150) is None  # one waits already
    assert triggers.check_schedule() is not None  # an hour boundary passed since it started
    assert triggers.check_schedule() is None  # the next one is an hour away
    assert [t.kind for t in store.waiting_triggers()] == ["drift_event", "label_volume", "schedule"]
    quiet = Triggers(store, TriggerPolicy(on_drift=False, label_volume=None))
    assert quiet.on_model_event(drift) is None and quiet.check_volume(10_000) is None


def merged(kind: str) -> float:
    return REGISTRY.get_sample_value("tuneloop_adapter_triggers_merged_total", {"kind": kind}) or 0


def test_two_monitors_announcing_one_drift_ask_for_one_retraining(tmp_path: Path) -> None:
    """Monitor replicas in one consumer group each publish drift_started for the version; Alertmanager's
    webhook reports it too. One trigger waits; the others are counted as merged."""
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    triggers = Triggers(store, TriggerPolicy())
    before = {kind: merged(kind) for kind in metrics.DRIFT_KINDS}
    replicas = [ModelEvent(kind="drift_started", version="v1", transition=signal, actor=f"monitor-{n}")
                for n, signal in enumerate(["embedding", "text_oov"])]
    ids = [triggers.on_model_event(event) for event in replicas]
    ids += triggers.on_alerts(AlertNotification.model_validate(notification(signal="embedding")))
    (waiting,) = store.waiting_triggers()
    assert ids == [waiting.id] * 3 and waiting.detail["signals"] == "embedding"
    assert {kind: merged(kind) - before[kind] for kind in before} == {
        "drift_event": 1, "drift_alert": 1}
    # Another version's drift is its own trigger.
    assert triggers.on_model_event(replicas[0].model_copy(update={"version": "v2"})) != waiting.id
    assert len(store.waiting_triggers()) == 2


def test_tuneloop_retrain_records_a_manual_trigger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "retrain", "--store", url, "--reason",
                           "yelp launch", "--actor", "alice"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "retraining requested (trigger 1)" in done.stdout
    (trigger,) = LabelStore(url).waiting_triggers()
    assert (trigger.kind, trigger.detail) == ("manual", {"actor": "alice", "reason": "yelp launch"})
