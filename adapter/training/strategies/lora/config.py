from __future__ import annotations

from pydantic import BaseModel, Field


class LoraStrategyConfig(BaseModel):
    """LoRA: low-rank adapters on the attention projections, the new head trained in full; the
    adapters are merged into the weights before export, so serving sees a plain model."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = ["query", "value"]
