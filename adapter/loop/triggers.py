"""Why a retraining is asked for. Every trigger is recorded in the store and waits there until a retraining
takes it (adapter/loop/retrain.py): a trigger that comes without enough fresh labels waits for them.

- ``drift_alert``: Alertmanager's webhook, a firing TuneloopDriftDetected (payload validated, bearer token
  checked as Alertmanager's ``http_config.authorization`` sends it);
- ``drift_event``: a ``drift_started`` event on ``tuneloop.model-events`` (the monitor's own word);
- ``label_volume``: this many fresh examples since the last retraining;
- ``schedule``: a cron expression;
- ``manual``: ``tuneloop retrain``, or an operator through the admin API.

A drift trigger for a model version that already has one waiting is merged into it, not recorded: several
monitor replicas each announce the same drift, Alertmanager repeats a firing alert, and the alert and the
event report one drift twice. One retraining answers them all.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, Field

from adapter.errors import WebhookError
from adapter.loop import metrics
from adapter.loop.policy import TriggerPolicy
from adapter.loop.store import LabelStore
from tuneloop.events.schemas import ModelEvent

log = logging.getLogger(__name__)

DRIFT_ALERT = "TuneloopDriftDetected"


class Alert(BaseModel):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # noqa: N815 (Alertmanager's names)
    fingerprint: str = ""


class AlertNotification(BaseModel):
    """Alertmanager's webhook payload (version 4)."""

    version: str
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    alerts: list[Alert] = Field(min_length=1)


class WebhookAuth:
    """The bearer token Alertmanager must send: the content of ``adapter.webhook_token_file``."""

    def __init__(self, token_file: Path | None) -> None:
        self.token = token_file.read_text().strip().encode() if token_file is not None else None

    @property
    def configured(self) -> bool:
        return bool(self.token)

    def check(self, authorization: str | None) -> None:
        if not self.token:
            raise WebhookError("the alert webhook has no token configured (adapter.webhook_token_file)")
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest: how long the comparison takes says nothing about how much of the token was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise WebhookError("missing or wrong bearer token")


class Triggers:
    def __init__(self, store: LabelStore, policy: TriggerPolicy, started: datetime | None = None) -> None:
        self.store = store
        self.policy = policy
        self.started = started or datetime.now(timezone.utc)

    def _add(self, kind: str, detail: dict[str, Any]) -> int:
        metrics.TRIGGERS.labels(kind).inc()
        return self.store.add_trigger(kind, detail)

    def _add_drift(self, kind: str, detail: dict[str, Any]) -> int:
        """The trigger recorded, or the waiting one for the same model version that it was merged into."""
        recorded = self.store.add_version_trigger(kind, detail, merge_with=metrics.DRIFT_KINDS)
        if recorded.merged:
            metrics.TRIGGERS_MERGED.labels(kind).inc()
            log.info("%s for model version %s merged into waiting trigger %d", kind, detail["model_version"],
                     recorded.id)
        else:
            metrics.TRIGGERS.labels(kind).inc()
        return recorded.id

    def on_alerts(self, notification: AlertNotification) -> list[int]:
        """One trigger per drifting model version of a notification (Alertmanager groups them that way)."""
        if not self.policy.on_drift:
            return []
        by_version: dict[str, list[str]] = {}
        for alert in notification.alerts:
            if alert.status == "firing" and alert.labels.get("alertname") == DRIFT_ALERT:
                by_version.setdefault(alert.labels.get("model_version", "?"), []).append(alert.labels.get("signal", "?"))
        return [self._add_drift("drift_alert", {"model_version": version, "signals": sorted(signals)})
                for version, signals in by_version.items()]

    def on_model_event(self, event: ModelEvent) -> int | None:
        if event.kind != "drift_started" or not self.policy.on_drift:
            return None
        detail = {"model_version": event.version, "signals": event.transition or "", "reason": event.reason}
        return self._add_drift("drift_event", detail)

    def manual(self, actor: str, reason: str) -> int:
        return self._add("manual", {"actor": actor, "reason": reason})

    def check_volume(self, fresh_examples: int) -> int | None:
        """Enough fresh examples ask for a retraining by themselves (once: not while one such waits)."""
        volume = self.policy.label_volume
        if volume is None or fresh_examples < volume:
            return None
        if any(t.kind == "label_volume" for t in self.store.waiting_triggers()):
            return None
        return self._add("label_volume", {"fresh_examples": fresh_examples, "threshold": volume})

    def check_schedule(self, now: datetime | None = None) -> int | None:
        if self.policy.schedule is None:
            return None
        now = now or datetime.now(timezone.utc)
        last = self.store.last_trigger("schedule")
        since = last.at if last is not None else self.started
        due = croniter(self.policy.schedule, since).get_next(datetime)
        if due > now:
            return None
        return self._add("schedule", {"cron": self.policy.schedule, "due": due.isoformat()})
