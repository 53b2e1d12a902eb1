"""The classifier the adapter trains and exports: a pre-trained encoder with a classification head, and the
computation both PyTorch evaluation and the ONNX graph perform (logits and a sentence embedding).

The drift monitor compares live embeddings with the reference sample's, so the served graph must emit the
same vector the reference was computed with: the attention-masked mean of the last hidden layer (the
pooling MiniLM-L6 was trained with).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from adapter.errors import TrainingError


def load_classifier(weights: str, label_names: list[str], dropout: float) -> PreTrainedModel:
    """The encoder with a head for ``label_names``: new from a pre-trained encoder, or the head a registered
    version already has (same labels) when continuing it."""
    try:
        config = AutoConfig.from_pretrained(
            weights, num_labels=len(label_names),
            id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
        )
        # BERT-style dropout knobs; other architectures ignore the unknown attributes.
        config.hidden_dropout_prob = dropout
        config.attention_probs_dropout_prob = dropout
        config.classifier_dropout = dropout
        # A pre-trained encoder has no head: its weights are missing from the checkpoint by design.
        return AutoModelForSequenceClassification.from_pretrained(weights, config=config)
    except OSError as exc:
        raise TrainingError(f"cannot load base model {weights!r}: {exc}") from None


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


@torch.inference_mode()
def predict_torch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                  max_length: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and sentence embeddings for ``texts``, in their order; batches sorted by length."""
    wrapper = ClassifierWithEmbedding(model).eval()
    device = model.device  # the GPU where training ran on one
    order = np.argsort([len(t) for t in texts], kind="stable")
    logits_out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    emb_out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        logits, embedding = wrapper(**{k: v.to(device) for k, v in enc.items()
                                       if k in ("input_ids", "attention_mask", "token_type_ids")})
        logits, embedding = logits.float().cpu(), embedding.float().cpu()
        for row, i in enumerate(idx):
            logits_out[i] = logits[row].numpy()
            emb_out[i] = embedding[row].numpy()
    return np.stack(logits_out).astype(np.float32), np.stack(emb_out).astype(np.float32)

