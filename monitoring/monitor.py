"""The drift monitor's core: a window per model version, evaluated against that version's reference.

Windows are tumbling time windows held as a bounded uniform sample (``monitor.window_mode: time``, the
default: one evaluation per version per window, whatever the traffic), or sliding count windows (``count``).
A time window whose sample is smaller than ``monitor.min_window_sample`` gives no verdict: the monitor says
"not enough data" (``tuneloop_drift_not_enough_data``) and leaves the drift state as it was.

Transport-free: the Kafka consume loop (monitoring/consume.py), the tests and the benchmark all feed it
``Observation``s. It updates the Prometheus series, keeps the Evidently reports, and tells an event sink when
a drift episode starts and ends.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from monitoring.errors import ObservationRejectedError, ReferenceUnavailableError, SignalEvaluationError
from monitoring.metrics import MonitorMetrics
from monitoring.reference import ReferenceLoader, ReferenceSample
from monitoring.reports import ReportStore, StoredReport, merge_snapshots
from monitoring.signals import BoundSignal, Signal, SignalResult, build_signals
from monitoring.window import Observation, SlidingWindow, TimeWindow, WindowData
from tuneloop.settings import MonitorSettings

log = logging.getLogger(__name__)

# A version whose reference could not be loaded is retried this often, not on every event.
REFERENCE_RETRY_S = 60.0


@dataclass(frozen=True)
class Evaluation:
    id: str
    model_version: str
    at: float
    rows: int  # the rows evaluated: the window's sample
    results: list[SignalResult]
    failed: list[str]  # signals that raised on this window
    drift: bool  # some signal detected drift on this window
    durations: dict[str, float] = field(default_factory=dict)
    predictions: int = 0  # predictions the window counted (a time window evaluates a sample of them)

    def scores(self) -> dict[str, float]:
        return {r.signal: r.score for r in self.results}


class DriftEventSink(Protocol):
    def drift_started(self, model_name: str | None, version: str, evaluation: Evaluation) -> None: ...

    def drift_ended(self, model_name: str | None, version: str, evaluation: Evaluation) -> None: ...


@dataclass
class _VersionState:
    window: SlidingWindow | TimeWindow
    bound: list[tuple[Signal, BoundSignal]]
    labels: list[str]
    embedding_width: int  # the reference's: a window's rows must match it, or no signal can compare them
    classes: int
    model_name: str | None = None
    drifting: bool = False
    clean_streak: int = 0


class DriftMonitor:
    def __init__(
        self,
        settings: MonitorSettings,
        references: ReferenceLoader,
        *,
        metrics: MonitorMetrics | None = None,
        reports: ReportStore | None = None,
        events: DriftEventSink | None = None,
        clock: Callable[[], float] = time.time,
        keep_reports: bool = True,
    ) -> None:
        self.settings = settings
        self.signals = build_signals(settings.signals)
        self.references = references
        self.metrics = metrics or MonitorMetrics()
        self.reports = reports or ReportStore(settings.reports_kept)
        self.events = events
        self.clock = clock
        self.keep_reports = keep_reports
        self._versions: dict[str, _VersionState] = {}
        self._unavailable: dict[str, float] = {}  # version → when its reference last failed to load
        self._ids = itertools.count(1)
        self._observed = self.metrics.events.labels("observed")
        self._next_due = float("inf")  # the earliest event time at which some version's time window closes
        # The lag alert compares the lag with a window: seconds for time windows, events for count windows.
        if settings.window_mode == "time":
            self.metrics.window_seconds.set(settings.window_seconds)
        else:
            self.metrics.window_size.set(settings.window_size)

    # ------------------------------------------------------------------ feeding
    def observe(self, observation: Observation, model_name: str | None = None) -> Evaluation | None:
        """Add one prediction; returns the evaluation of the window it completed (a count window's step, or
        the time window it closed by falling past its end), if that window gave a verdict.

        Raises ``ObservationRejectedError`` (counted) for a version without a reference, or an observation
        that does not fit it: one such row in a window would fail every evaluation until it left the window.
        """
        return self.offer(observation.model_version, observation.timestamp, lambda: observation, model_name)

    def offer(
        self,
        version: str,
        timestamp: float,
        build: Callable[[], Observation],
        model_name: str | None = None,
    ) -> Evaluation | None:
        """``observe`` for a prediction not decoded yet: ``build`` is called only if its window keeps it.

        A time window's reservoir keeps a shrinking share of a busy window's predictions; the others are
        counted, never decoded nor checked (so at high traffic ``undecodable`` counts the sampled ones).
        """
        try:
            state = self._state(version)
            if state is None:
                raise ObservationRejectedError(
                    version, "unknown_version", f"no reference sample for model version {version}"
                )
            if model_name:
                state.model_name = model_name
            window = state.window
            if isinstance(window, SlidingWindow):
                observation = build()
                self._check(observation, state)
                self._observed.inc()
                due = window.add(observation)
                evaluation = self._evaluate(version, state, window.snapshot()) if due else None
                self.metrics.window_fill.labels(version).set(window.fill())
                return evaluation
            evaluation = self._close(version, state) if window.rolls_over(timestamp) else None
            opening = window.start is None
            slot = window.slot(timestamp)
            if opening:
                self._next_due = min(self._next_due, window.next_due(self.settings.window_grace_seconds))
            if slot is not None:
                observation = build()
                self._check(observation, state)
                window.put(slot, observation)
        except ObservationRejectedError as exc:
            self.metrics.rejected(exc.reason)
            raise
        self._observed.inc()
        if window.seen % 64 == 1:  # a gauge set per event costs more than the reservoir; this one moves slowly
            self.metrics.window_fill.labels(version).set(window.fill(self.settings.min_window_sample))
        if timestamp >= self._next_due:  # traffic went past another version's window: close it too
            self.close_windows(timestamp)
        return evaluation

    def close_windows(self, until: float) -> list[Evaluation]:
        """Close every time window that traffic (or the clock) at ``until`` has passed, grace included.

        The consume loop calls it with the wall clock when it has caught up with the topic (a poll found
        nothing): a window whose traffic stopped closes then, and a quiet version's window reports "not
        enough data" instead of waiting for more predictions. A version that had no prediction for a whole
        window also reports it.
        """
        grace = self.settings.window_grace_seconds
        evaluations = []
        for version, state in list(self._versions.items()):
            window = state.window
            if isinstance(window, TimeWindow) and window.due(until, grace):
                evaluation = self._close(version, state, until - grace)
                if evaluation is not None:
                    evaluations.append(evaluation)
        self._next_due = min(
            (s.window.next_due(grace) for s in self._versions.values() if isinstance(s.window, TimeWindow)),
            default=float("inf"),
        )
        return evaluations

    def _close(self, version: str, state: _VersionState, until: float | None = None) -> Evaluation | None:
        """Close a version's time window: evaluate its sample, or say "not enough data"."""
        assert isinstance(state.window, TimeWindow)
        predictions, current = state.window.close(until)
        self.metrics.window_predictions.labels(version).set(predictions)
        self.metrics.window_fill.labels(version).set(0)
        if current is None or len(current) < self.settings.min_window_sample:
            # No verdict on a handful: the drift gauges and the episode keep what the last verdict said.
            self.metrics.not_enough_data.labels(version).set(1)
            return None
        self.metrics.not_enough_data.labels(version).set(0)
        return self._evaluate(version, state, current, predictions)

    @staticmethod
    def _check(observation: Observation, state: _VersionState) -> None:
        version = observation.model_version
        probabilities, embedding = observation.probabilities, observation.embedding
        if (probabilities.shape != (state.classes,) or not np.isfinite(probabilities).all()
                or not 0 <= observation.prediction < state.classes):
            raise ObservationRejectedError(
                version,
                "labels",
                f"a prediction of {version} does not fit its {state.classes} labels: "
                f"class {observation.prediction}, probabilities {probabilities}",
            )
        if embedding is None:  # the service logs none (kafka.log_embeddings off): the signal stays silent
            return
        if embedding.ndim != 1 or not np.isfinite(embedding).all():
            raise ObservationRejectedError(
                version,
                "bad_embedding",
                f"a prediction of {version} has an embedding of shape {embedding.shape} or non-finite values",
            )
        if embedding.shape[0] != state.embedding_width:
            raise ObservationRejectedError(
                version,
                "embedding_width",
                f"a prediction of {version} has a {embedding.shape[0]}-wide embedding, "
                f"its reference {state.embedding_width}",
            )

    def _state(self, version: str) -> _VersionState | None:
        state = self._versions.get(version)
        if state is not None:
            return state
        failed_at = self._unavailable.get(version)
        if failed_at is not None and self.clock() - failed_at < REFERENCE_RETRY_S:
            return None
        try:
            reference = self.references(version)
            bound = self._bind(reference)
        except ReferenceUnavailableError as exc:
            log.warning("%s; its traffic is not watched (retry in %.0f s)", exc, REFERENCE_RETRY_S)
            self.metrics.errors.labels("reference_unavailable").inc()
            self._unavailable[version] = self.clock()
            return None
        self._unavailable.pop(version, None)
        window: SlidingWindow | TimeWindow
        if self.settings.window_mode == "time":
            # Seeded per version: a replay of the same traffic samples the same rows.
            window = TimeWindow(
                self.settings.window_seconds, self.settings.max_window_sample, random.Random(version)
            )
        else:
            window = SlidingWindow(self.settings.window_size, self.settings.window_step)
        state = _VersionState(
            window,
            bound,
            reference.labels,
            embedding_width=reference.data.embeddings.shape[1],
            classes=reference.data.probabilities.shape[1],
        )
        self._versions[version] = state
        for signal, _ in state.bound:
            self.metrics.threshold.labels(signal.name, version).set(signal.config.threshold)
        return state

    def _bind(self, reference: ReferenceSample) -> list[tuple[Signal, BoundSignal]]:
        try:
            return [(signal, signal.bind(reference)) for signal in self.signals]
        except Exception as exc:  # a reference the signals cannot use is no reference: retried, not per event
            raise ReferenceUnavailableError(
                reference.version, f"a drift signal cannot use it: {exc}"
            ) from exc

    # ------------------------------------------------------------------ evaluating
    def _evaluate(
        self, version: str, state: _VersionState, current: WindowData, predictions: int | None = None
    ) -> Evaluation:
        now = self.clock()
        results: list[SignalResult] = []
        failed: list[str] = []
        durations: dict[str, float] = {}
        for signal, bound in state.bound:
            started = time.perf_counter()
            try:
                result = bound.evaluate(current)
            except Exception as exc:  # one broken signal must not blind the others
                error = SignalEvaluationError(signal.name, version, exc)
                log.exception("%s", error)
                self.metrics.errors.labels("signal_failed").inc()
                failed.append(signal.name)
                continue
            finally:
                durations[signal.name] = time.perf_counter() - started
                self.metrics.duration.labels(signal.name).observe(durations[signal.name])
            if result is None:
                continue
            results.append(result)
            self.metrics.score.labels(signal.name, version).set(result.score)
            self.metrics.detected.labels(signal.name, version).set(1 if result.detected else 0)
        evaluation = Evaluation(
            id=f"{version}-{next(self._ids):06d}",
            model_version=version,
            at=now,
            rows=len(current),
            results=results,
            failed=failed,
            drift=any(r.detected for r in results),
            durations=durations,
            predictions=len(current) if predictions is None else predictions,
        )
        self.metrics.last_evaluation.labels(version).set(now)
        if self.keep_reports:
            self._store_report(evaluation)
        self._track_episode(version, state, evaluation)
        return evaluation

    def _store_report(self, evaluation: Evaluation) -> None:
        snapshots = [r.snapshot for r in evaluation.results if r.snapshot is not None]
        summary = {
            r.signal: {"score": r.score, "threshold": r.threshold, "detected": r.detected, "method": r.method}
            for r in evaluation.results
        }
        merged = (
            merge_snapshots(
                snapshots,
                name=f"tuneloop drift {evaluation.id}",
                metadata={"model_version": evaluation.model_version},
            )
            if snapshots
            else None
        )
        self.reports.add(
            StoredReport(
                evaluation.id, evaluation.model_version, evaluation.at, summary, evaluation.drift, merged
            )
        )

    def _track_episode(self, version: str, state: _VersionState, evaluation: Evaluation) -> None:
        if evaluation.drift:
            state.clean_streak = 0
            if not state.drifting:
                state.drifting = True
                self._emit("drift_started", state, version, evaluation)
        elif state.drifting and not evaluation.failed:
            state.clean_streak += 1
            if state.clean_streak >= self.settings.drift_end_after:
                state.drifting = False
                state.clean_streak = 0
                self._emit("drift_ended", state, version, evaluation)
        self.metrics.episode.labels(version).set(1 if state.drifting else 0)

    def _emit(self, kind: str, state: _VersionState, version: str, evaluation: Evaluation) -> None:
        log.warning(
            "%s for model version %s: %s",
            kind.replace("_", " "),
            version,
            ", ".join(f"{r.signal}={r.score:.3f}{'!' if r.detected else ''}" for r in evaluation.results),
        )
        if self.events is None:
            return
        try:
            getattr(self.events, kind)(state.model_name, version, evaluation)
        except Exception:  # the episode still counts; the gauges carry it even if the event is lost
            log.exception("could not publish the %s event for %s", kind, version)
            self.metrics.errors.labels("event_publish_failed").inc()

    # ------------------------------------------------------------------ housekeeping
    def labels(self, version: str) -> list[str] | None:
        """The version's label names (index = class id), or None while its reference is unavailable."""
        state = self._state(version)
        return state.labels if state else None

    def is_drifting(self, version: str) -> bool:
        state = self._versions.get(version)
        return bool(state and state.drifting)

    def versions(self) -> list[str]:
        return list(self._versions)

    def forget_idle(self, now: float | None = None) -> list[str]:
        """Drop versions without traffic for ``idle_version_s`` (their windows and series)."""
        now = self.clock() if now is None else now
        # Versions without a reference are remembered only until their retry: events naming ever new
        # versions must not grow this forever.
        self._unavailable = {v: t for v, t in self._unavailable.items() if now - t < REFERENCE_RETRY_S}
        idle = [
            v for v, s in self._versions.items() if now - s.window.last_seen > self.settings.idle_version_s
        ]
        for version in idle:
            del self._versions[version]
            self.metrics.forget_version(version, [s.name for s in self.signals])
            forget = getattr(self.references, "forget", None)
            if forget:
                forget(version)
        return idle
