from __future__ import annotations

from typing import ClassVar, Literal

from adapter.training.strategies.base import Strategy, StrategyConfig, StrategyName


class FullConfig(StrategyConfig):
    """Full fine-tuning: every weight of the encoder and the new head is trained. No options."""

    name: Literal[StrategyName.FULL] = StrategyName.FULL
    default_learning_rate: ClassVar[float] = 5e-5

    def build(self) -> Strategy:
        from adapter.training.strategies.full.model import FullStrategy

        return FullStrategy(self)
