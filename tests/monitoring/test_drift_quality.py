"""The quality bar on the sentiment data: quiet on held-out amazon, loud within 2 windows of yelp/imdb.

Real Evidently, real MiniLM embeddings, the monitor's default settings (the ones shipped). How the streams are
sampled is in tests/monitoring/corpus.py; bench/bench_drift.py measures the same over more streams.
"""

from __future__ import annotations

import pytest

from tests.monitoring.corpus import run_stream as corpus_run_stream
from tuneloop.settings import MonitorSettings

IN_DOMAIN_WINDOWS = 20


def run_stream(scenario, settings: MonitorSettings, domain: str, warm_windows: int, seed: int):
    _, before, after = corpus_run_stream(scenario, settings, domain, warm_windows, seed)
    return before, after


def test_held_out_traffic_then_yelp(scenario):
    settings = MonitorSettings()
    before, after = run_stream(scenario, settings, "yelp", IN_DOMAIN_WINDOWS, seed=11)
    assert len(before) == IN_DOMAIN_WINDOWS
    false_alarms = [e.scores() for e in before if e.drift]
    assert len(false_alarms) <= 1, false_alarms
    first_detection = next(i for i, e in enumerate(after, 1) if e.drift)
    assert first_detection <= 2, [e.scores() for e in after]


@pytest.mark.parametrize("domain", ["imdb"])
def test_switch_to_imdb(scenario, domain):
    settings = MonitorSettings()
    before, after = run_stream(scenario, settings, domain, 2, seed=12)
    assert not any(e.drift for e in before)
    assert next(i for i, e in enumerate(after, 1) if e.drift) <= 2, [e.scores() for e in after]


def test_embedding_signal_alone_meets_the_bar(scenario):
    """The embedding signal must carry the bar by itself: text may not be logged (log_inputs: hash)."""
    settings = MonitorSettings(
        signals={name: {"enabled": name == "embedding"} for name in MonitorSettings.DEFAULT_SIGNALS}
    )
    before, after = run_stream(scenario, settings, "yelp", IN_DOMAIN_WINDOWS, seed=13)
    assert sum(e.drift for e in before) <= 1
    assert next(i for i, e in enumerate(after, 1) if e.drift) <= 2
