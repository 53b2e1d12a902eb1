"""The gates a candidate must pass before it may be promoted, by the names the policy uses (``gates``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapter.errors import PolicyError
from adapter.loop.gates.base import FRESH_TEST_SET, Evidence, Gate, GateConfig, Graph, Predictions
from adapter.loop.gates.class_recall import ClassRecallGate
from adapter.loop.gates.fresh_gain import FreshGainGate
from adapter.loop.gates.golden import GoldenGate
from adapter.loop.gates.latency import LatencyGate
from adapter.loop.gates.parity import ParityGate
from tuneloop.registry import GateReport

GATES: dict[str, type[Gate]] = {cls.name: cls for cls in
                                (GoldenGate, FreshGainGate, ClassRecallGate, ParityGate, LatencyGate)}

__all__ = ["FRESH_TEST_SET", "GATES", "Evidence", "Gate", "GateConfig", "Graph", "Predictions", "build_gates", "judge"]


def build_gates(options: Mapping[str, Mapping[str, Any]]) -> list[Gate]:
    """The enabled gates, each validated against its own config."""
    unknown = sorted(set(options) - set(GATES))
    if unknown:
        raise PolicyError(f"unknown gate(s) {', '.join(unknown)}; known: {', '.join(GATES)}")
    gates = []
    for name, raw in options.items():
        try:
            config = GATES[name].Config.model_validate(dict(raw))
        except ValidationError as exc:
            raise PolicyError(f"gate {name!r}: {exc}") from exc
        if config.enabled:
            gates.append(GATES[name](config))
    return gates


def judge(gates: list[Gate], evidence: Evidence) -> GateReport:
    results = [gate.judge(evidence) for gate in gates]
    sets = {FRESH_TEST_SET: evidence.fresh, **evidence.golden}
    comparison = {name: p.metrics for name, p in sets.items() if p.metrics is not None and len(p)}
    return GateReport(against=evidence.production_version, passed=all(r.passed for r in results), results=results,
                      comparison=comparison)
