"""No regression on the golden test sets: production's own test sets (its home domain and what it was held to
before). A candidate that gains on the new domain by forgetting the old one fails here."""

from __future__ import annotations

from pydantic import Field

from adapter.loop.gates.base import Evidence, Gate, GateConfig
from tuneloop.registry import GateResult


class GoldenConfig(GateConfig):
    max_drop: float = Field(0.02, ge=0, le=1, description="accuracy the candidate may lose on each golden set")


class GoldenGate(Gate):
    name = "golden"
    Config = GoldenConfig

    def judge(self, evidence: Evidence) -> GateResult:
        figures, reasons = {}, []
        for name, sets in evidence.golden.items():
            before, after = sets.accuracy("production"), sets.accuracy("candidate")
            figures[name] = {"n": len(sets), "production": round(before, 4), "candidate": round(after, 4),
                             "change": round(after - before, 4)}
            if after < before - self.config.max_drop - 1e-9:
                reasons.append(f"{name}: accuracy {after:.3f} against production's {before:.3f} "
                               f"(may drop {self.config.max_drop:g} at most)")
        figures["max_drop"] = self.config.max_drop
        return GateResult(name=self.name, passed=not reasons, figures=figures, reasons=reasons)
