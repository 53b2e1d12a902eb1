from __future__ import annotations

from pydantic import BaseModel


class FullConfig(BaseModel):
    """Full fine-tuning: every weight of the encoder and the new head is trained. No options."""
