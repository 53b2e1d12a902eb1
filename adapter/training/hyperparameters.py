"""The hyperparameters of one fine-tuning run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Hyperparameters(BaseModel):
    """Fine-tuning practice for small labelled sets: low learning rate, weight decay, dropout, warmup,
    gradient clipping, and early stopping on validation macro-F1."""

    strategy: str = "full"
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=1024)
    epochs: int = Field(3, ge=1, le=100)
    weight_decay: float = Field(0.01, ge=0, le=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(128, ge=8, le=4096)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    class_weights: Literal["none", "balanced"] = "none"
    patience: int = Field(2, ge=1, description="evaluations without a better validation macro-F1 before stopping")
    # Strategy options: each strategy reads only its own (see adapter/training/strategies/*/config.py).
    frozen_layers: int = Field(4, ge=0, description="freeze: encoder layers frozen from the bottom")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
