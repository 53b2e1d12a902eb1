from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from adapter.training.strategies.base import Strategy, StrategyConfig, StrategyName


class FreezeConfig(StrategyConfig):
    """Frozen lower layers: the embeddings and the bottom ``frozen_layers`` encoder layers keep their
    pre-trained weights; the upper layers and the new head are trained. Cheaper, and it forgets less."""

    name: Literal[StrategyName.FREEZE] = StrategyName.FREEZE
    frozen_layers: int = Field(4, ge=0, description="encoder layers frozen from the bottom")
    freeze_embeddings: bool = True
    # Fewer weights move, and the upper layers start from useful features: full fine-tuning's rate works.
    default_learning_rate: ClassVar[float] = 5e-5

    def build(self) -> Strategy:
        from adapter.training.strategies.freeze.model import FreezeStrategy

        return FreezeStrategy(self)
