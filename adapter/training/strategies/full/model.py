from __future__ import annotations

from torch import nn

from adapter.training.hyperparameters import Hyperparameters
from adapter.training.strategies.full.config import FullConfig


class FullStrategy:
    name = "full"

    def __init__(self, config: FullConfig) -> None:
        self.config = config

    @staticmethod
    def config_from(hp: Hyperparameters) -> FullConfig:
        return FullConfig()

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        return model
