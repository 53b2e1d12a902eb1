"""Training strategies, chosen by name: each folder holds its ``config.py`` (the knobs and their defaults,
the one place they live) and ``model.py`` (what the strategy does to the model), as peft's methods do.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from adapter.training.strategies.base import Strategy, StrategyName
from adapter.training.strategies.freeze.config import FreezeConfig
from adapter.training.strategies.full.config import FullConfig
from adapter.training.strategies.lora.config import LoraConfig

AnyStrategyConfig = Annotated[FullConfig | FreezeConfig | LoraConfig, Field(discriminator="name")]
CONFIGS: dict[StrategyName, type[FullConfig | FreezeConfig | LoraConfig]] = {
    StrategyName.FULL: FullConfig, StrategyName.FREEZE: FreezeConfig, StrategyName.LORA: LoraConfig,
}

__all__ = ["AnyStrategyConfig", "CONFIGS", "FreezeConfig", "FullConfig", "LoraConfig", "Strategy", "StrategyName",
           "trainable_share"]


def trainable_share(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable / total if total else 0.0
