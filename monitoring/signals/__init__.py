"""The drift signals, by the names the settings use (``monitor.signals``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from monitoring.errors import MonitorConfigError
from monitoring.signals.base import BoundSignal, Signal, SignalConfig, SignalResult
from monitoring.signals.confidence import ConfidenceSignal
from monitoring.signals.embedding import EmbeddingSignal
from monitoring.signals.prediction import PredictionSignal
from monitoring.signals.text import TextLengthSignal, TextOovSignal

SIGNALS: dict[str, type[Signal]] = {
    cls.name: cls
    for cls in (EmbeddingSignal, PredictionSignal, ConfidenceSignal, TextLengthSignal, TextOovSignal)
}


def build_signals(options: Mapping[str, Mapping[str, Any]]) -> list[Signal]:
    """The enabled signals, each validated against its own config."""
    unknown = sorted(set(options) - set(SIGNALS))
    if unknown:
        raise MonitorConfigError(f"unknown drift signal(s) {', '.join(unknown)}; known: {', '.join(SIGNALS)}")
    signals = []
    for name, raw in options.items():
        try:
            config = SIGNALS[name].Config.model_validate(dict(raw))
        except ValidationError as exc:
            raise MonitorConfigError(f"drift signal {name!r}: {exc}") from exc
        if config.enabled:
            signals.append(SIGNALS[name](config))
    if not signals:
        raise MonitorConfigError("every drift signal is disabled: the monitor would watch nothing")
    return signals


__all__ = ["SIGNALS", "BoundSignal", "Signal", "SignalConfig", "SignalResult", "build_signals"]
