"""The monitor's core without a broker: settings, windows, drift episodes, references, missing inputs."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.errors import MonitorConfigError, MonitorError, ReferenceUnavailableError
from monitoring.monitor import DriftMonitor
from monitoring.reference import RegistryReferences, reference_from_arrays
from monitoring.signals import build_signals
from monitoring.window import Observation, SlidingWindow
from tests.monitoring.stack import DOMAIN_WORDS, synthetic_rows
from tuneloop.registry import Registry
from tuneloop.settings import MonitorSettings, load_settings


def test_signal_overrides_merge_over_defaults(monkeypatch):
    monkeypatch.setenv("TUNELOOP_MONITOR__SIGNALS__EMBEDDING__THRESHOLD", "0.8")
    settings = load_settings(monitor={"signals": {"text_oov": {"enabled": False}}})
    signals = settings.monitor.signals
    assert signals["embedding"] == {"method": "model", "threshold": "0.8"}
    assert signals["prediction"] == MonitorSettings.DEFAULT_SIGNALS["prediction"]
    built = build_signals(signals)
    assert [s.name for s in built] == ["embedding", "prediction", "confidence", "text_length"]
    assert built[0].config.threshold == 0.8


@pytest.mark.parametrize(
    "signals", [{"nope": {}}, {"embedding": {"method": "tsne"}}, {"prediction": {"thresh": 1}}]
)
def test_bad_signal_config_is_a_config_error(signals):
    with pytest.raises(MonitorConfigError):
        build_signals(MonitorSettings(signals=signals).signals)


def test_all_signals_disabled_is_a_config_error():
    off = {name: {"enabled": False} for name in MonitorSettings.DEFAULT_SIGNALS}
    with pytest.raises(MonitorConfigError):
        build_signals(MonitorSettings(signals=off).signals)


def _obs(rows, i, version="v1", text=True):
    return Observation(
        version,
        rows["embeddings"][i],
        rows["probabilities"][i],
        int(rows["predictions"][i]),
        str(rows["texts"][i]) if text else None,
        1e9 + i,
    )


def test_window_waits_for_a_full_window_then_steps():
    rows = synthetic_rows(40, np.random.default_rng(0))
    window = SlidingWindow(size=10, step=4)
    due = [window.add(_obs(rows, i)) for i in range(9)]
    assert not any(due) and window.fill() == pytest.approx(0.9)
    assert window.add(_obs(rows, 9))
    assert len(window.snapshot()) == 10 and window.fill() == 0
    due = [window.add(_obs(rows, i)) for i in range(10, 14)]
    assert due == [False, False, False, True] and len(window) == 10


class RecordingSink:
    def __init__(self):
        self.events = []

    def drift_started(self, model_name, version, evaluation):
        self.events.append(("started", model_name, version, evaluation.id))

    def drift_ended(self, model_name, version, evaluation):
        self.events.append(("ended", model_name, version, evaluation.id))


def test_drift_episode_starts_and_ends_once():
    rng = np.random.default_rng(1)
    reference = reference_from_arrays("v1", ["negative", "positive"], synthetic_rows(300, rng))
    sink = RecordingSink()
    settings = MonitorSettings(window_mode="count", window_size=100, window_step=100, drift_end_after=2)
    monitor = DriftMonitor(settings, lambda v: reference, events=sink, keep_reports=False)
    phases = [(0.0, None, 2), (1.5, DOMAIN_WORDS, 3), (0.0, None, 3)]
    flags = []
    for shift, words, windows in phases:
        rows = synthetic_rows(100 * windows, rng, shift, **({"words": words} if words else {}))
        flags += [e.drift for i in range(100 * windows) if (e := monitor.observe(_obs(rows, i), "sentiment"))]
    assert flags == [False, False, True, True, True, False, False, False]
    assert [(k, m, v) for k, m, v, _ in sink.events] == [
        ("started", "sentiment", "v1"),
        ("ended", "sentiment", "v1"),
    ]
    episode = monitor.metrics.registry.get_sample_value(
        "tuneloop_drift_episode_active", {"model_version": "v1"}
    )
    assert episode == 0 and not monitor.is_drifting("v1")


@pytest.mark.parametrize(
    ("settings", "seconds", "size"),
    [(MonitorSettings(window_seconds=90), 90, 0),
     (MonitorSettings(window_mode="count", window_size=300), 0, 300)],
    ids=["time", "count"],
)
def test_the_window_the_lag_alert_compares_with_is_exported_for_either_mode(settings, seconds, size):
    """TuneloopMonitorLagging reads the lag against the mode's window: a 0 for the other mode keeps its branch
    out (monitoring/prometheus/rules_test.yml)."""
    monitor = DriftMonitor(settings, lambda v: None, keep_reports=False)
    exported = monitor.metrics.registry.get_sample_value
    assert exported("tuneloop_monitor_window_seconds") == seconds
    assert exported("tuneloop_monitor_window_size") == size


def test_without_logged_texts_the_text_signals_stay_silent():
    rng = np.random.default_rng(2)
    reference = reference_from_arrays("v1", ["negative", "positive"], synthetic_rows(200, rng))
    monitor = DriftMonitor(
        MonitorSettings(window_mode="count", window_size=50, window_step=50), lambda v: reference, keep_reports=False
    )
    rows = synthetic_rows(50, rng)
    evaluation = [e for i in range(50) if (e := monitor.observe(_obs(rows, i, text=False)))][0]
    assert set(evaluation.scores()) == {"embedding", "prediction", "confidence"} and not evaluation.failed


def test_unknown_version_is_counted_and_not_watched(tmp_path):
    references = RegistryReferences(Registry(tmp_path / "registry"))
    with pytest.raises(ReferenceUnavailableError):
        references("v9")
    monitor = DriftMonitor(MonitorSettings(), references, keep_reports=False)
    rows = synthetic_rows(3, np.random.default_rng(3))
    with pytest.raises(MonitorError) as rejected:
        monitor.observe(_obs(rows, 0, version="v9"))
    assert rejected.value.reason == "unknown_version"
    registry = monitor.metrics.registry
    assert registry.get_sample_value("tuneloop_monitor_events_total", {"outcome": "no_reference"}) == 1
    assert registry.get_sample_value("tuneloop_monitor_errors_total", {"kind": "reference_unavailable"}) == 1
    with pytest.raises(MonitorError):
        monitor.observe(_obs(rows, 1, version="v9"))  # retried only after REFERENCE_RETRY_S
    assert registry.get_sample_value("tuneloop_monitor_errors_total", {"kind": "reference_unavailable"}) == 1
    assert registry.get_sample_value("tuneloop_monitor_events_total", {"outcome": "no_reference"}) == 2


def _changed(observation, **fields):
    return Observation(**{**observation.__dict__, **fields})


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda o: _changed(o, embedding=o.embedding[:8]), "embedding_width"),
        (lambda o: _changed(o, embedding=np.concatenate([o.embedding, o.embedding])), "embedding_width"),
        (lambda o: _changed(o, embedding=np.full_like(o.embedding, np.nan)), "bad_embedding"),
        (lambda o: _changed(o, embedding=o.embedding.reshape(4, 4)), "bad_embedding"),
        (lambda o: _changed(o, probabilities=np.array([0.2, 0.3, 0.5], dtype=np.float32)), "labels"),
        (lambda o: _changed(o, probabilities=np.array([np.nan, 1.0], dtype=np.float32)), "labels"),
        (lambda o: _changed(o, prediction=2), "labels"),
    ],
    ids=["narrow", "wide", "nan", "matrix", "three-classes", "nan-probability", "class-out-of-range"],
)
def test_an_observation_that_does_not_fit_the_reference_never_enters_the_window(bad, reason):
    rng = np.random.default_rng(6)
    reference = reference_from_arrays("v1", ["negative", "positive"], synthetic_rows(200, rng))
    settings = MonitorSettings(window_mode="count", window_size=20, window_step=20)
    monitor = DriftMonitor(settings, lambda v: reference, keep_reports=False)
    rows = synthetic_rows(21, rng)
    evaluations = [e for i in range(10) if (e := monitor.observe(_obs(rows, i)))]
    with pytest.raises(MonitorError) as rejected:
        monitor.observe(bad(_obs(rows, 10)))
    assert rejected.value.reason == reason
    evaluations += [e for i in range(11, 21) if (e := monitor.observe(_obs(rows, i)))]
    # The window filled with the 20 good rows around the bad one, and every signal read it.
    assert [(e.rows, e.failed) for e in evaluations] == [(20, [])]
    assert len(evaluations[0].results) == 5
    registry = monitor.metrics.registry
    assert registry.get_sample_value("tuneloop_monitor_events_total", {"outcome": "undecodable"}) == 1
    assert registry.get_sample_value("tuneloop_monitor_events_total", {"outcome": "observed"}) == 20


def test_idle_versions_are_forgotten_with_their_series():
    rng = np.random.default_rng(4)
    reference = reference_from_arrays("v1", ["negative", "positive"], synthetic_rows(100, rng))
    settings = MonitorSettings(window_mode="count", window_size=20, window_step=20, idle_version_s=60)
    monitor = DriftMonitor(settings, lambda v: reference, keep_reports=False)
    rows = synthetic_rows(20, rng)
    for i in range(20):
        monitor.observe(_obs(rows, i))
    assert (
        monitor.metrics.registry.get_sample_value(
            "tuneloop_drift_score", {"signal": "embedding", "model_version": "v1"}
        )
        is not None
    )
    assert monitor.forget_idle(now=1e9 + 19 + 61) == ["v1"]
    assert (
        monitor.metrics.registry.get_sample_value(
            "tuneloop_drift_score", {"signal": "embedding", "model_version": "v1"}
        )
        is None
    )
