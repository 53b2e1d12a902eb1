"""The quality bar the README states, on the served model: no false alarm on held-out amazon traffic, drift
raised within 2 windows of a switch to yelp or imdb.

The model is MiniLM fine-tuned by `tuneloop train`, at the default validation fraction and at the demo's (its
reference sample is its own reference.npz: 101 and 250 rows); the traffic is what `tuneloop serve` logged for
it (tests/monitoring/corpus.py). Real Evidently, the monitor's shipped settings. bench/bench_drift.py measures
the same over more streams (bench/results/drift.md).
"""

from __future__ import annotations

from tests.monitoring.corpus import run_stream
from tuneloop.settings import MonitorSettings

IN_DOMAIN_WINDOWS = 20


def first_detection(after) -> int | None:
    return next((i for i, e in enumerate(after, 1) if e.drift), None)


def test_held_out_traffic_then_yelp(scenario):
    _, before, after = run_stream(scenario, MonitorSettings(), "yelp", IN_DOMAIN_WINDOWS, seed=11)
    assert len(before) == IN_DOMAIN_WINDOWS
    assert [e.scores() for e in before if e.drift] == []
    assert first_detection(after) in (1, 2), [e.scores() for e in after]


def test_switch_to_imdb(scenario):
    _, before, after = run_stream(scenario, MonitorSettings(), "imdb", 2, seed=12)
    assert not any(e.drift for e in before)
    assert first_detection(after) in (1, 2), [e.scores() for e in after]


def test_embedding_signal_alone_meets_the_bar(scenario):
    """The embedding signal must carry the bar by itself: text may not be logged (log_inputs: hash)."""
    settings = MonitorSettings(
        signals={name: {"enabled": name == "embedding"} for name in MonitorSettings.DEFAULT_SIGNALS}
    )
    _, before, after = run_stream(scenario, settings, "yelp", IN_DOMAIN_WINDOWS, seed=13)
    assert [e.scores() for e in before if e.drift] == []
    assert first_detection(after) in (1, 2), [e.scores() for e in after]
