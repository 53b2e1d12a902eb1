"""The computation both PyTorch evaluation and the ONNX graph perform: logits and a sentence embedding.

The drift monitor compares live embeddings with the reference sample's, so the served graph must
emit the same vector the reference was computed with: the attention-masked mean of the last hidden
layer (the pooling MiniLM-L6 was trained with).
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUT_NAMES = ["logits", "embedding"]


class ClassifierWithEmbedding(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.classifier(**kwargs, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        embedding = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return out.logits, embedding
