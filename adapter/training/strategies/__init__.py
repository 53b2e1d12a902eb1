"""Training strategies, chosen by name: each folder holds its ``config.py`` and ``model.py``.

A strategy prepares a freshly loaded pre-trained classifier for training (what to freeze, which
adapters to add) and finalises it afterwards (merge adapters), so that export always sees a plain
transformers model.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from adapter.errors import TrainingError
from adapter.training.hyperparameters import Hyperparameters
from adapter.training.strategies.freeze.model import FreezeStrategy
from adapter.training.strategies.full.model import FullStrategy
from adapter.training.strategies.lora.model import LoraStrategy


class Strategy(Protocol):
    name: str

    def prepare(self, model: nn.Module) -> nn.Module: ...

    def finalize(self, model: nn.Module) -> nn.Module: ...


STRATEGIES = {"full": FullStrategy, "freeze": FreezeStrategy, "lora": LoraStrategy}


def build_strategy(hp: Hyperparameters) -> Strategy:
    try:
        strategy_cls = STRATEGIES[hp.strategy]
    except KeyError:
        raise TrainingError(f"unknown strategy {hp.strategy!r}; use one of: {', '.join(STRATEGIES)}") from None
    return strategy_cls(strategy_cls.config_from(hp))


def trainable_share(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable / total if total else 0.0
