"""The baseline a team would deploy without tuneloop: a transformers PyTorch model behind BentoML,
answering each request as it comes (no ONNX Runtime, no batching across requests), on the GPU where there is one."""

from __future__ import annotations

import os

import bentoml
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MODEL_DIR = os.environ["NAIVE_MODEL_DIR"]  # a registry version folder: pytorch/ and tokenizer/
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@bentoml.service(name="naive", workers=1, traffic={"timeout": 60})
class NaiveTorch:
    def __init__(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(MODEL_DIR, "tokenizer"))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            os.path.join(MODEL_DIR, "pytorch")).eval().to(DEVICE)

    @bentoml.api(route="/classify")
    def classify(self, texts: list[str]) -> dict:
        with torch.inference_mode():
            enc = self.tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
            probs = self.model(**enc.to(DEVICE)).logits.softmax(-1).cpu()
        labels = [self.model.config.id2label[int(i)] for i in probs.argmax(-1)]
        return {"predictions": [{"label": l, "score": float(p.max())} for l, p in zip(labels, probs)]}
