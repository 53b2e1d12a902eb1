from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from adapter.training.strategies.base import Strategy, StrategyConfig, StrategyName


class LoraConfig(StrategyConfig):
    """LoRA: low-rank adapters on the attention projections, the new head trained in full; the
    adapters are merged into the weights before export, so serving sees a plain model."""

    name: Literal[StrategyName.LORA] = StrategyName.LORA
    r: int = Field(8, ge=1, description="rank of the adapters")
    alpha: int = Field(16, ge=1, description="scale of the adapters' update (alpha / r)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: tuple[str, ...] = ("query", "value")
    # Adapters start at zero and hold a few thousand weights: at full fine-tuning's 5e-5 they barely move
    # (MiniLM on the amazon sentences stayed at chance after 3 epochs); an order of magnitude more learns.
    default_learning_rate: ClassVar[float] = 1e-3

    def build(self) -> Strategy:
        from adapter.training.strategies.lora.model import LoraStrategy

        return LoraStrategy(self)
