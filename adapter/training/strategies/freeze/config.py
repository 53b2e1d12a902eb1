from __future__ import annotations

from pydantic import BaseModel, Field


class FreezeConfig(BaseModel):
    """Frozen lower layers: the embeddings and the bottom ``frozen_layers`` encoder layers keep their
    pre-trained weights; the upper layers and the new head are trained. Cheaper, and it forgets less."""

    frozen_layers: int = Field(4, ge=0)
    freeze_embeddings: bool = True
