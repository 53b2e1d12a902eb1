"""What every gate is: a config, and a verdict on a candidate against the version in production.

The evidence is gathered once for all gates (adapter/loop/retrain.py): per test set the true labels and both
versions' predictions from their ONNX graphs (what is served, not PyTorch), the candidate's parity reports, and
where both graphs are, for a gate that measures them itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from tuneloop.registry import GateResult, ParityReport, SetComparison
from tuneloop.settings import ServingSettings


# The comparison's name for the fresh test set (production's own sets keep the names its card gave them).
FRESH_TEST_SET = "fresh"


class GateConfig(BaseModel):
    """Options every gate takes; a gate's own config adds to these and sets its defaults."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


@dataclass(frozen=True)
class Predictions:
    """One test set: the true class ids and what each version predicted, row for row (with their metrics, for
    the card's comparison)."""

    labels: np.ndarray
    production: np.ndarray
    candidate: np.ndarray
    metrics: SetComparison | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def accuracy(self, which: str) -> float:
        return float((getattr(self, which) == self.labels).mean()) if len(self) else float("nan")


@dataclass(frozen=True)
class Graph:
    """A version's ONNX graph as the service would load it."""

    onnx_path: Path
    tokenizer_dir: Path
    max_length: int


@dataclass(frozen=True)
class Evidence:
    production_version: str
    label_names: list[str]
    fresh: Predictions  # the newest fresh examples, never trained on
    golden: dict[str, Predictions]  # production's own test sets: what must not be forgotten
    parity: dict[str, ParityReport]  # the candidate's graphs against its PyTorch model
    graphs: dict[str, Graph]  # "production", "candidate"
    serving: ServingSettings  # the session options the service runs graphs with
    sample_texts: list[str]  # real traffic, for a gate that runs the graphs


class Gate(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[GateConfig]]

    def __init__(self, config: GateConfig) -> None:
        self.config = config

    @abstractmethod
    def judge(self, evidence: Evidence) -> GateResult:
        """Figures and a verdict, with a reason per failure."""
