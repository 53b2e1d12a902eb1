from __future__ import annotations

import peft
from torch import nn

from adapter.training.strategies.lora.config import LoraConfig


class LoraStrategy:
    def __init__(self, config: LoraConfig) -> None:
        self.config = config

    def prepare(self, model: nn.Module) -> nn.Module:
        # TaskType.SEQ_CLS keeps the new classifier head fully trainable (modules_to_save).
        peft_config = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS, r=self.config.r, lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout, target_modules=list(self.config.target_modules),
        )
        return peft.get_peft_model(model, peft_config)

    def finalize(self, model: nn.Module) -> nn.Module:
        if isinstance(model, peft.PeftModel):
            return model.merge_and_unload()
        return model
