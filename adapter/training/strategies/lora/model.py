from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from adapter.training.hyperparameters import Hyperparameters
from adapter.training.strategies.lora.config import LoraStrategyConfig


class LoraStrategy:
    name = "lora"

    def __init__(self, config: LoraStrategyConfig) -> None:
        self.config = config

    @staticmethod
    def config_from(hp: Hyperparameters) -> LoraStrategyConfig:
        return LoraStrategyConfig(r=hp.lora_r, alpha=hp.lora_alpha, dropout=hp.lora_dropout)

    def prepare(self, model: nn.Module) -> nn.Module:
        # TaskType.SEQ_CLS keeps the new classifier head fully trainable (modules_to_save).
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=self.config.r, lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout, target_modules=self.config.target_modules,
        )
        return get_peft_model(model, peft_config)

    def finalize(self, model: nn.Module) -> nn.Module:
        if isinstance(model, PeftModel):
            return model.merge_and_unload()
        return model
