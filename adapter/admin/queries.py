"""What operators read, computed once for the API and the console: versions, a candidate against production,
live accuracy over time, the drift state the monitor reports, the audit trail."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from pydantic import BaseModel, Field

from adapter.admin.errors import NotFoundError
from adapter.loop.store import LabelStore
from tuneloop.registry import EvalMetrics, ModelCard, Registry, State, VersionNotFoundError
from tuneloop.registry.journal import AuditEntry

log = logging.getLogger(__name__)

COMPARED = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "ece")
# Bucket widths for the accuracy plot: the smallest that keeps a series under MAX_POINTS points.
BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400)
MAX_POINTS = 60


class VersionRow(BaseModel):
    version: str
    model_name: str
    state: State
    created_at: str
    parent_version: str | None
    strategy: str
    accuracy: float | None = Field(description="on the version's own test set")
    gates_passed: bool | None = Field(description="None: not judged by the adapter's gates")


class MetricChange(BaseModel):
    metric: str
    production: float
    candidate: float
    change: float


class SetDifference(BaseModel):
    """A candidate against production on one test set, both through their ONNX graphs."""

    test_set: str
    n: int
    metrics: list[MetricChange]
    recall_per_class: list[MetricChange]
    labels: list[str]
    confusion_production: list[list[int]]
    confusion_candidate: list[list[int]]


class VersionDetail(BaseModel):
    version: str
    state: State
    production: str | None
    actions: list[str] = Field(description="what an operator may do to this version now")
    card: ModelCard
    audit: list[AuditEntry]
    differences: list[SetDifference]


class AccuracyPoint(BaseModel):
    start: datetime
    n: int
    accuracy: float


class AccuracySeries(BaseModel):
    version: str
    points: list[AccuracyPoint]


class LiveAccuracy(BaseModel):
    since: datetime
    bucket_seconds: int
    series: list[AccuracySeries]


class DriftVersion(BaseModel):
    model_version: str
    drift: bool
    at: str
    report_id: str
    signals: dict[str, dict[str, Any]]


class DriftState(BaseModel):
    monitor: str | None = Field(description="the monitor's address; None: not configured")
    error: str | None = Field(None, description="why the state could not be read")
    versions: list[DriftVersion] = Field(default_factory=list, description="the latest report per version")


def version_rows(registry: Registry) -> list[VersionRow]:
    rows = []
    for summary in registry.list_versions():  # one read of each card: the summary carries the gates' verdict
        rows.append(VersionRow(version=summary.version, model_name=summary.model_name, state=State(summary.state),
                               created_at=summary.created_at, parent_version=summary.parent_version,
                               strategy=summary.strategy, accuracy=summary.metrics.get("accuracy"),
                               gates_passed=summary.gates_passed))
    return sorted(rows, key=lambda r: int(r.version[1:]) if r.version[1:].isdigit() else 0, reverse=True)


def actions_for(state: State, is_production: bool, has_history: bool) -> list[str]:
    actions = {State.AWAITING_APPROVAL: ["approve", "reject"], State.APPROVED: ["promote", "reject"],
               State.CANDIDATE: ["reject"]}.get(state, [])
    if is_production and has_history:
        actions.append("rollback")
    return actions


def version_detail(registry: Registry, version: str) -> VersionDetail:
    try:
        card, state = registry.card(version), registry.state(version)
    except VersionNotFoundError as exc:
        raise NotFoundError(str(exc)) from exc
    production = registry.production()
    return VersionDetail(
        version=version, state=state, production=production,
        actions=actions_for(state, version == production, bool(registry.production_history())),
        card=card, audit=registry.audit_log(version), differences=differences(card),
    )


def _change(metric: str, production: float, candidate: float) -> MetricChange:
    return MetricChange(metric=metric, production=round(production, 4), candidate=round(candidate, 4),
                        change=round(candidate - production, 4))


def _difference(name: str, production: EvalMetrics, candidate: EvalMetrics, labels: list[str]) -> SetDifference:
    return SetDifference(
        test_set=name, n=candidate.n, labels=labels,
        metrics=[_change(m, getattr(production, m), getattr(candidate, m)) for m in COMPARED],
        recall_per_class=[_change(label, production.per_class[label].recall, candidate.per_class[label].recall)
                          for label in labels if label in production.per_class and label in candidate.per_class],
        confusion_production=production.confusion_matrix, confusion_candidate=candidate.confusion_matrix,
    )


def differences(card: ModelCard) -> list[SetDifference]:
    """The candidate against the production version it was gated against, per test set (empty for a version
    the adapter did not gate)."""
    if card.gates is None:
        return []
    return [_difference(name, pair.production, pair.candidate, card.labels)
            for name, pair in card.gates.comparison.items()]


def audit(registry: Registry, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` transitions, newest first."""
    return list(reversed(registry.audit_log()))[:limit]


def live_accuracy(store: LabelStore, hours: float, now: datetime | None = None) -> LiveAccuracy:
    """Each version's accuracy on the feedback received, per time bucket."""
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(hours=hours)
    span = (now - since).total_seconds()
    bucket = next((b for b in BUCKETS_S if span / b <= MAX_POINTS), BUCKETS_S[-1])
    tallies: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for version, at, correct in store.outcomes(since):
        tally = tallies[version][int(at.timestamp()) // bucket]
        tally[0] += 1
        tally[1] += correct
    series = [AccuracySeries(version=version, points=[
        AccuracyPoint(start=datetime.fromtimestamp(slot * bucket, timezone.utc), n=n, accuracy=round(right / n, 4))
        for slot, (n, right) in sorted(buckets.items())]) for version, buckets in sorted(tallies.items())]
    return LiveAccuracy(since=since, bucket_seconds=bucket, series=series)


def drift_state(monitor_url: str | None, timeout_s: float = 3.0) -> DriftState:
    """The latest drift report per model version, as the monitor lists them; an error, never an exception, when
    the monitor cannot be reached (the console must still load)."""
    if not monitor_url:
        return DriftState(monitor=None)
    try:
        response = httpx.get(f"{monitor_url.rstrip('/')}/reports", params={"format": "json"}, timeout=timeout_s)
        response.raise_for_status()
        reports = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("drift state from %s: %s", monitor_url, exc)
        return DriftState(monitor=monitor_url, error=f"the monitor did not answer: {type(exc).__name__}")
    latest: dict[str, DriftVersion] = {}
    for report in reports:  # newest first
        version = str(report.get("model_version", "?"))
        if version not in latest:
            latest[version] = DriftVersion(model_version=version, drift=bool(report.get("drift")),
                                           at=str(report.get("at", "")), report_id=str(report.get("id", "")),
                                           signals=report.get("signals") or {})
    return DriftState(monitor=monitor_url, versions=sorted(latest.values(), key=lambda d: d.model_version))


def fetch_report(monitor_url: str | None, report_id: str, timeout_s: float = 10.0) -> bytes:
    """One drift report's HTML from the monitor, for the console to show on its own origin."""
    if not monitor_url:
        raise NotFoundError("no monitor is configured (adapter.monitor_url)")
    try:
        response = httpx.get(f"{monitor_url.rstrip('/')}/reports/{report_id}", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise NotFoundError(f"the monitor did not answer: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise NotFoundError(f"the monitor has no report {report_id} (it keeps only the latest)")
    return response.content
