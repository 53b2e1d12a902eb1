from __future__ import annotations

from torch import nn

from adapter.training.strategies.full.config import FullConfig


class FullStrategy:
    def __init__(self, config: FullConfig) -> None:
        self.config = config

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        return model
