"""Every class keeps a minimum recall, on the fresh test set and on each golden set: an accuracy gain that
comes from always answering the majority class fails here."""

from __future__ import annotations

from pydantic import Field

from adapter.loop.gates.base import Evidence, Gate, GateConfig
from tuneloop.registry import GateResult


class ClassRecallConfig(GateConfig):
    min_recall: float = Field(0.5, ge=0, le=1, description="the lowest recall any class may have")


class ClassRecallGate(Gate):
    name = "class_recall"
    Config = ClassRecallConfig

    def judge(self, evidence: Evidence) -> GateResult:
        figures, reasons = {}, []
        for set_name, sets in {"fresh": evidence.fresh, **evidence.golden}.items():
            recalls = {}
            for class_id, label in enumerate(evidence.label_names):
                rows = sets.labels == class_id
                if rows.any():  # a class a set never holds has no recall to judge
                    recalls[label] = round(float((sets.candidate[rows] == class_id).mean()), 4)
            figures[set_name] = recalls
            reasons += [f"{set_name}: recall of {label!r} is {recall:.3f} (at least {self.config.min_recall:g})"
                        for label, recall in recalls.items() if recall < self.config.min_recall]
        figures["min_recall"] = self.config.min_recall
        return GateResult(name=self.name, passed=not reasons, figures=figures, reasons=reasons)
