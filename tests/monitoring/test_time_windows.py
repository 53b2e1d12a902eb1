"""Time windows: one evaluation per window on a bounded uniform sample whatever the traffic, no verdict on a
handful of predictions, and windows that close when traffic or the clock moves past them."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from monitoring.errors import ObservationRejectedError
from monitoring.monitor import DriftMonitor
from monitoring.reference import reference_from_arrays
from monitoring.window import Observation, TimeWindow
from tests.monitoring.stack import DOMAIN_WORDS, LABELS, only_v1, synthetic_rows
from tuneloop.settings import MonitorSettings

START = 1.8e9  # a multiple of 60: window boundaries fall on whole minutes from here


def _obs(rows, i, timestamp, version="v1"):
    return Observation(version, rows["embeddings"][i], rows["probabilities"][i], int(rows["predictions"][i]),
                       str(rows["texts"][i]), timestamp)


def _gauge(monitor, name, version="v1"):
    return monitor.metrics.registry.get_sample_value(name, {"model_version": version})


@pytest.fixture(scope="module")
def reference():
    return reference_from_arrays("v1", LABELS, synthetic_rows(300, np.random.default_rng(31)))


def test_the_reservoir_keeps_every_prediction_of_a_window_with_the_same_chance():
    """Sample 100 of 1,000 predictions, 400 times: a prediction early in the window and one late in it are
    kept equally often (10%), and the sample never grows past its bound."""
    rng = random.Random(4)
    kept = np.zeros(1000)
    for _ in range(400):
        window = TimeWindow(60, 100, rng)
        for i in range(1000):
            slot = window.slot(START + i * 0.05)
            if slot is not None:
                window.put(slot, i)  # the index stands in for an observation
        assert len(window) == 100 and window.seen == 1000
        kept[window._sample] += 1
    shares = kept / 400
    assert shares[:200].mean() == pytest.approx(0.1, abs=0.01)
    assert shares[-200:].mean() == pytest.approx(0.1, abs=0.01)
    assert shares[400:600].mean() == pytest.approx(0.1, abs=0.01)


def test_a_busy_window_is_evaluated_once_on_its_bounded_sample_decoding_few_predictions(reference):
    settings = MonitorSettings(window_seconds=60, max_window_sample=200, min_window_sample=100)
    monitor = DriftMonitor(settings, only_v1(reference), keep_reports=False)
    rows = synthetic_rows(5000, np.random.default_rng(32))
    built = 0

    def build(i):
        def decode():
            nonlocal built
            built += 1
            return _obs(rows, i, START + i * 0.01)
        return decode

    evaluations = [e for i in range(5000) if (e := monitor.offer("v1", START + i * 0.01, build(i), "sentiment"))]
    assert evaluations == []  # 50 s of traffic: the window is still open
    assert _gauge(monitor, "tuneloop_drift_window_fill") == 1.0
    # The prediction that falls past the window's end closes it: one evaluation, on 200 rows of 5,000.
    closing = monitor.observe(_obs(rows, 0, START + 61))
    assert closing is not None and (closing.rows, closing.predictions) == (200, 5000)
    assert _gauge(monitor, "tuneloop_drift_window_predictions") == 5000
    assert _gauge(monitor, "tuneloop_drift_not_enough_data") == 0
    # The reservoir asked for ~200 * (1 + ln 25) = 844 of the 5,000 predictions to be decoded.
    assert 200 < built < 1200
    counted = monitor.metrics.registry.get_sample_value
    assert counted("tuneloop_monitor_events_total", {"outcome": "observed"}) == 5001
    assert counted("tuneloop_drift_evaluation_duration_seconds_count", {"signal": "embedding"}) == 1
    assert counted("tuneloop_monitor_window_seconds", {}) == 60


def test_a_window_short_of_the_minimum_says_not_enough_data_and_keeps_the_last_verdict(reference):
    settings = MonitorSettings(window_seconds=60, max_window_sample=150, min_window_sample=100,
                               drift_end_after=1)
    monitor = DriftMonitor(settings, only_v1(reference), keep_reports=False)
    rng = np.random.default_rng(33)
    drifted = synthetic_rows(300, rng, shift=1.5, words=DOMAIN_WORDS)
    clean = synthetic_rows(30, rng)
    for i in range(300):  # minute 0: a drifted window, well over the minimum
        monitor.observe(_obs(drifted, i, START + i * 0.19))
    verdict = monitor.observe(_obs(clean, 0, START + 60))  # minute 1 opens: minute 0 is judged
    assert verdict is not None and verdict.drift
    for i in range(1, 30):  # minute 1: 30 clean predictions, too few to judge
        monitor.observe(_obs(clean, i, START + 60 + i))
    assert monitor.close_windows(START + 120 + settings.window_grace_seconds) == []
    assert _gauge(monitor, "tuneloop_drift_not_enough_data") == 1
    assert _gauge(monitor, "tuneloop_drift_window_predictions") == 30
    # No verdict on 30 rows: the episode and the drift flags stay as the last verdict left them.
    assert monitor.is_drifting("v1")
    assert monitor.metrics.registry.get_sample_value(
        "tuneloop_drift_detected", {"signal": "embedding", "model_version": "v1"}) == 1


def test_a_window_without_any_traffic_reports_not_enough_data(reference):
    settings = MonitorSettings(window_seconds=60, max_window_sample=150, min_window_sample=100)
    monitor = DriftMonitor(settings, only_v1(reference), keep_reports=False)
    rows = synthetic_rows(200, np.random.default_rng(34))
    for i in range(200):
        monitor.observe(_obs(rows, i, START + i * 0.25))
    assert len(monitor.close_windows(START + 65)) == 1  # minute 0 judged: the clock passed it
    assert _gauge(monitor, "tuneloop_drift_not_enough_data") == 0
    assert monitor.close_windows(START + 121) == []  # minute 1 is not over until its grace is
    assert _gauge(monitor, "tuneloop_drift_not_enough_data") == 0
    assert monitor.close_windows(START + 125) == []  # minute 1 went by without one prediction
    assert _gauge(monitor, "tuneloop_drift_not_enough_data") == 1
    assert _gauge(monitor, "tuneloop_drift_window_predictions") == 0


def test_another_versions_traffic_closes_a_window_whose_own_traffic_stopped(reference):
    references = {"v1": reference, "v2": reference_from_arrays("v2", LABELS, synthetic_rows(300, np.random.default_rng(35)))}
    settings = MonitorSettings(window_seconds=60, max_window_sample=150, min_window_sample=100)
    monitor = DriftMonitor(settings, references.__getitem__, keep_reports=False)
    rows = synthetic_rows(200, np.random.default_rng(36))
    for i in range(200):
        monitor.observe(_obs(rows, i, START + i * 0.25))  # v1, minute 0; then v1 stops
    for i in range(100):
        monitor.observe(_obs(rows, i, START + 50 + i * 0.2, version="v2"))  # v2 goes on past 65 s
    assert _gauge(monitor, "tuneloop_drift_window_predictions") == 200
    assert _gauge(monitor, "tuneloop_drift_not_enough_data") == 0
    assert monitor.metrics.registry.get_sample_value(
        "tuneloop_drift_score", {"signal": "embedding", "model_version": "v1"}) is not None


def test_a_prediction_that_does_not_fit_is_rejected_when_its_window_samples_it(reference):
    monitor = DriftMonitor(MonitorSettings(), only_v1(reference), keep_reports=False)
    rows = synthetic_rows(1, np.random.default_rng(37))
    wide = Observation("v1", np.zeros(32, np.float32), rows["probabilities"][0], 0, "a text", START)
    with pytest.raises(ObservationRejectedError) as rejected:
        monitor.observe(wide)
    assert rejected.value.reason == "embedding_width"
    assert monitor.metrics.registry.get_sample_value(
        "tuneloop_monitor_events_total", {"outcome": "undecodable"}) == 1


@pytest.mark.parametrize("fields", [
    {"min_window_sample": 300},  # more than the default max_window_sample of 200
    {"max_window_sample": 5},
    {"window_seconds": 0},
    {"window_mode": "hourly"},
])
def test_bad_window_settings_are_refused_with_the_field_named(fields):
    with pytest.raises(ValidationError) as refused:
        MonitorSettings(**fields)
    assert next(iter(fields)) in str(refused.value)
