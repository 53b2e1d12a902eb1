"""The model registry: the contract between training (adapter), serving (service) and monitoring."""

from tuneloop.registry.card import (DataFile, EvalMetrics, GateReport, GateResult, Lineage, ModelCard, ParityReport,
                                    SetComparison, Timings)
from tuneloop.registry.errors import (
    CorruptStateError,
    CorruptVersionError,
    IllegalTransitionError,
    NoProductionVersionError,
    NothingToRollBackToError,
    RegistryBusyError,
    RegistryError,
    VersionNotFoundError,
)
from tuneloop.registry.lifecycle import State
from tuneloop.registry.store import ModelVersion, Registry, VersionSummary

__all__ = [
    "CorruptStateError", "CorruptVersionError", "DataFile", "EvalMetrics", "GateReport", "GateResult",
    "IllegalTransitionError", "Lineage", "ModelCard", "ModelVersion", "NoProductionVersionError",
    "NothingToRollBackToError", "ParityReport", "Registry", "RegistryBusyError", "RegistryError", "SetComparison", "State",
    "Timings", "VersionNotFoundError", "VersionSummary",
]
