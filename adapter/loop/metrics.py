"""The adapter's Prometheus series (docs/metrics.md), exported on its own port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from adapter.loop.store import FEEDBACK_OUTCOMES

EXAMPLES = Gauge("tuneloop_adapter_examples", "Labelled examples stored, by true label and the version that "
                 "predicted them", ["label", "model_version"])
FRESH = Gauge("tuneloop_adapter_fresh_examples", "Examples newer than what production's lineage trained on")
PREDICTIONS = Counter("tuneloop_adapter_predictions_stored_total", "Prediction events stored to join feedback to")
FEEDBACK = Counter("tuneloop_adapter_feedback_total", "Feedback events, by what became of them", ["outcome"])
FEEDBACK_DELAY = Histogram("tuneloop_adapter_feedback_delay_seconds", "Feedback time minus prediction time, "
                           "per example", buckets=(1, 10, 60, 600, 3600, 6 * 3600, 86400, 7 * 86400))
TRIGGERS = Counter("tuneloop_adapter_triggers_total", "Retrainings asked for, by why", ["kind"])
TRIGGERS_MERGED = Counter("tuneloop_adapter_triggers_merged_total", "Drift triggers merged into one already "
                          "waiting for the same model version, not recorded", ["kind"])
RETRAININGS = Counter("tuneloop_adapter_retrainings_total", "Retrainings, by outcome", ["outcome"])
RUNNING = Gauge("tuneloop_adapter_retraining_running", "1 while this process retrains")
RETRAIN_SECONDS = Histogram("tuneloop_adapter_retraining_duration_seconds", "Wall time of one retraining",
                            buckets=(30, 60, 120, 300, 600, 1200, 3600, 7200))
ROLLBACKS = Counter("tuneloop_adapter_rollbacks_total", "Promotions rolled back because live metrics fell")
WAITING = Gauge("tuneloop_adapter_candidate_waiting_seconds", "Age of the oldest version awaiting approval "
                "(0: none waits)")
WEBHOOK = Counter("tuneloop_adapter_webhook_requests_total", "Alert notifications received, by answer", ["status"])

DRIFT_KINDS = ("drift_alert", "drift_event")
TRIGGER_KINDS = (*DRIFT_KINDS, "label_volume", "schedule", "manual")
RETRAIN_OUTCOMES = ("awaiting_approval", "rejected", "production", "failed", "interrupted")


def initialise() -> None:
    """Every labelled series from the start, at 0: "nothing happened" must read as 0, not as no data."""
    for outcome in FEEDBACK_OUTCOMES:
        FEEDBACK.labels(outcome)
    for kind in TRIGGER_KINDS:
        TRIGGERS.labels(kind)
    for kind in DRIFT_KINDS:
        TRIGGERS_MERGED.labels(kind)
    for outcome in RETRAIN_OUTCOMES:
        RETRAININGS.labels(outcome)
