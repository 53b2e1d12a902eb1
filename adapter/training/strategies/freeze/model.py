from __future__ import annotations

from torch import nn

from adapter.errors import TrainingError
from adapter.training.strategies.freeze.config import FreezeConfig


class FreezeStrategy:
    def __init__(self, config: FreezeConfig) -> None:
        self.config = config

    def prepare(self, model: nn.Module) -> nn.Module:
        encoder_model = model.base_model  # BertModel & co. for any *ForSequenceClassification
        layers = getattr(getattr(encoder_model, "encoder", None), "layer", None)
        if layers is None:
            raise TrainingError(f"freeze: {type(encoder_model).__name__} has no encoder.layer stack to freeze")
        if self.config.frozen_layers > len(layers):
            raise TrainingError(f"freeze: asked to freeze {self.config.frozen_layers} layers, the model has {len(layers)}")
        frozen: list[nn.Module] = list(layers[: self.config.frozen_layers])
        if self.config.freeze_embeddings:
            frozen.append(encoder_model.embeddings)
        for module in frozen:
            for param in module.parameters():
                param.requires_grad = False
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        for param in model.parameters():
            param.requires_grad = True
        return model
