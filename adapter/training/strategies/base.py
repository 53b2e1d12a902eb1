"""What every training strategy shares: its name, the shape of its config, and what it does to a model."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict
from torch import nn


class StrategyName(StrEnum):
    FULL = "full"
    FREEZE = "freeze"
    LORA = "lora"


class StrategyConfig(BaseModel):
    """A strategy's own knobs. ``name`` tells the strategies apart in ``Hyperparameters.strategy``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrategyName
    # The learning rate a run takes when none is given: it belongs to the strategy, because what trains
    # (every weight, the upper layers, a few low-rank adapters) decides how large a step it wants.
    default_learning_rate: ClassVar[float]

    def build(self) -> Strategy:
        raise NotImplementedError


class Strategy(Protocol):
    """Prepares a freshly loaded pre-trained classifier for training (what to freeze, which adapters to add)
    and finalises it afterwards (merge adapters), so that export always sees a plain transformers model."""

    def prepare(self, model: nn.Module) -> nn.Module: ...

    def finalize(self, model: nn.Module) -> nn.Module: ...
