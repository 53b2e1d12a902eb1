"""Every exported graph decides like the PyTorch model it came from (the thresholds of ``export.parity_*``)."""

from __future__ import annotations

from adapter.loop.gates.base import Evidence, Gate, GateConfig
from tuneloop.registry import GateResult


class ParityConfig(GateConfig):
    pass


class ParityGate(Gate):
    name = "parity"
    Config = ParityConfig

    def judge(self, evidence: Evidence) -> GateResult:
        figures = {precision: {"max_abs_logit_diff": r.max_abs_logit_diff, "label_agreement": r.label_agreement,
                               "passed": r.passed} for precision, r in evidence.parity.items()}
        reasons = [f"{p}: max|Δlogit| {r.max_abs_logit_diff:.2e}, agreement {r.label_agreement:.4f} "
                   f"(thresholds {r.thresholds})" for p, r in evidence.parity.items() if not r.passed]
        if not evidence.parity:
            reasons.append("no parity report: the export was not checked")
        return GateResult(name=self.name, passed=not reasons, figures=figures, reasons=reasons)
