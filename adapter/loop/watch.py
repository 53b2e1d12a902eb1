"""After a promotion: watch the new version's live accuracy (from feedback) and the service's error rate for
``rollback.window_s``; below the policy's floor, roll back to the version it replaced — audited, published
(the registry's listeners), counted (``tuneloop_adapter_rollbacks_total``) and alerted (rules.yml)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapter.loop import metrics
from adapter.loop.policy import RollbackPolicy
from adapter.loop.store import LabelStore
from tuneloop.registry import Registry, State

log = logging.getLogger(__name__)

ACTOR = "tuneloop-adapter"
SERVER_ERRORS = ("5", "INTERNAL", "UNAVAILABLE", "UNKNOWN", "DATA_LOSS")


@dataclass
class _Watched:
    version: str
    since: datetime
    expected_accuracy: float | None
    requests: tuple[float, float] | None  # (all, server errors) at the start, from the service's counters


class PromotionWatch:
    def __init__(self, registry: Registry, store: LabelStore, policy: RollbackPolicy) -> None:
        self.registry = registry
        self.store = store
        self.policy = policy
        self.watched: _Watched | None = None

    def step(self) -> str | None:
        """Look once; returns the version rolled back, if it was."""
        production = self.registry.production()
        if production is None:
            self.watched = None
            return None
        if self.watched is None or self.watched.version != production:
            self.watched = self._start(production)
        watched = self.watched
        if watched is None:
            return None
        age = (datetime.now(timezone.utc) - watched.since).total_seconds()
        why = self._accuracy_fell(watched) or self._errors_rose(watched)
        if why is None:
            if age > self.policy.window_s:
                log.info("%s held up for the %.0f s watch after its promotion", watched.version, self.policy.window_s)
                self.watched = None
            return None
        pulled, restored = self.registry.rollback(ACTOR, why, expect=watched.version)
        metrics.ROLLBACKS.inc()
        log.error("rolled %s back to %s: %s", pulled, restored, why)
        self.watched = None
        return pulled

    def _start(self, version: str) -> _Watched | None:
        """Watch a version promoted within the window (a rollback's restored version is not watched again)."""
        entries = [e for e in self.registry.audit_log(version) if e.to_state == State.PRODUCTION.value]
        if not entries or entries[-1].actor == ACTOR and entries[-1].from_state == State.RETIRED.value:
            return None
        since = datetime.fromisoformat(entries[-1].at)
        if (datetime.now(timezone.utc) - since).total_seconds() > self.policy.window_s:
            return None
        card = self.registry.card(version)
        expected = None
        if card.gates is not None:
            fresh = next((r for r in card.gates.results if r.name == "fresh_gain"), None)
            expected = fresh.figures.get("candidate") if fresh else None
        if expected is None and card.metrics:
            expected = next(iter(card.metrics.values())).accuracy  # its home test set
        return _Watched(version, since, expected, self._request_counts())

    def _accuracy_fell(self, watched: _Watched) -> str | None:
        n, correct = self.store.live_accuracy(watched.version, watched.since)
        if watched.expected_accuracy is None or n < self.policy.min_feedback:
            return None
        accuracy, floor = correct / n, watched.expected_accuracy - self.policy.max_accuracy_drop
        if accuracy >= floor:
            return None
        return (f"live accuracy {accuracy:.3f} on {n} labelled predictions since its promotion, below the floor "
                f"{floor:.3f} (expected {watched.expected_accuracy:.3f} − {self.policy.max_accuracy_drop:g})")

    def _errors_rose(self, watched: _Watched) -> str | None:
        now = self._request_counts()
        if watched.requests is None or now is None:
            return None
        total, errors = now[0] - watched.requests[0], now[1] - watched.requests[1]
        if total < self.policy.min_feedback or errors / total <= self.policy.max_error_rate:
            return None
        return (f"{errors / total:.1%} of {total:.0f} requests since its promotion failed with a server error "
                f"(at most {self.policy.max_error_rate:.0%})")

    def _request_counts(self) -> tuple[float, float] | None:
        """(requests, server errors) the service answered so far, from its /metrics; None without a URL."""
        if not self.policy.service_metrics_url:
            return None
        try:
            text = httpx.get(self.policy.service_metrics_url, timeout=5).text
        except httpx.HTTPError as exc:
            log.warning("cannot read the service's metrics at %s: %s", self.policy.service_metrics_url, exc)
            return None
        total = errors = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "tuneloop_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        total += sample.value
                        errors += sample.value if sample.labels.get("status", "").startswith(SERVER_ERRORS) else 0
        return total, errors


def oldest_waiting_seconds(registry: Registry) -> float:
    """How long the oldest version awaiting approval has waited (0: none waits)."""
    oldest = 0.0
    now = time.time()
    for summary in registry.list_versions():
        if summary.state != State.AWAITING_APPROVAL.value:
            continue
        entered = [e for e in registry.audit_log(summary.version) if e.to_state == State.AWAITING_APPROVAL.value]
        if entered:
            oldest = max(oldest, now - datetime.fromisoformat(entered[-1].at).timestamp())
    return oldest
