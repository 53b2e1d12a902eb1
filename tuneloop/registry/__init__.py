"""The model registry: the contract between training (adapter), serving (service) and monitoring."""

from tuneloop.registry.card import DataFile, EvalMetrics, ModelCard, ParityReport, Timings
from tuneloop.registry.errors import (
    CorruptVersionError,
    IllegalTransitionError,
    NoProductionVersionError,
    NothingToRollBackToError,
    RegistryError,
    VersionNotFoundError,
)
from tuneloop.registry.lifecycle import State
from tuneloop.registry.store import ModelVersion, Registry, VersionSummary

__all__ = [
    "CorruptVersionError", "DataFile", "EvalMetrics", "IllegalTransitionError", "ModelCard", "ModelVersion",
    "NoProductionVersionError", "NothingToRollBackToError", "ParityReport", "Registry", "RegistryError",
    "State", "Timings", "VersionNotFoundError", "VersionSummary",
]
