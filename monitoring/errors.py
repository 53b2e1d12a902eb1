"""What can go wrong in the drift monitor, as exceptions the CLI and the consume loop tell apart."""

from __future__ import annotations

from typing import Literal, get_args

# Why the monitor skipped a schema-valid prediction event: its share of tuneloop_events_rejected_total{reason}
# (the consumer's own reasons are tuneloop.events.errors.BAD_EVENT_REASONS).
RejectionReason = Literal["wrong_type", "unknown_version", "labels", "bad_embedding", "embedding_width"]
REJECTION_REASONS: tuple[RejectionReason, ...] = get_args(RejectionReason)


class MonitorError(Exception):
    """Base class of every error the monitor raises on purpose."""


class MonitorConfigError(MonitorError):
    """The monitor's settings name an unknown signal or give a signal options it does not accept."""


class ReferenceUnavailableError(MonitorError):
    """A model version has no usable reference sample (not in the registry, no reference.npz, wrong shape)."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"no reference sample for model version {version}: {reason}")
        self.version = version
        self.reason = reason


class SignalEvaluationError(MonitorError):
    """A drift signal failed on a window (Evidently raised); the other signals of that window still count."""

    def __init__(self, signal: str, version: str, cause: BaseException) -> None:
        super().__init__(f"drift signal {signal!r} failed on a window of {version}: {cause}")
        self.signal = signal
        self.version = version


class ObservationRejectedError(MonitorError):
    """One prediction the monitor will not put in a window: its version has no reference, or it does not fit
    that reference. Only this prediction is skipped; the events around it are observed."""

    def __init__(self, version: str, reason: RejectionReason, message: str) -> None:
        super().__init__(message)
        self.version = version
        self.reason: RejectionReason = reason


class EventDecodeError(ObservationRejectedError):
    """A prediction event could not be turned into an observation (labels that do not fit, bad embedding)."""
