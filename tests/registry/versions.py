"""Small registry versions for the registry's tests: a card, a staged folder, publish and approve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tuneloop.registry import ModelCard, Registry, State, Timings


def make_card(name: str = "sentiment") -> ModelCard:
    return ModelCard(model_name=name, base_model="tiny", labels=["0", "1"], strategy="full",
                     hyperparameters={}, data=[], splits={"train": 1, "validation": 1, "test": 1}, metrics={},
                     timings=Timings(train_seconds=1.0, train_samples_per_second=1.0),
                     onnx_files={"fp32": "onnx/model.onnx"})


def make_staging(folder: Path, payload: bytes = b"weights" * 1000) -> Path:
    (folder / "onnx").mkdir(parents=True)
    (folder / "onnx" / "model.onnx").write_bytes(payload)
    (folder / "labels.json").write_text(json.dumps({"labels": ["0", "1"]}))
    np.savez(folder / "reference.npz", embeddings=np.zeros((2, 4), dtype=np.float32))
    return folder


def publish(reg: Registry, tmp_path: Path, tag: str = "a") -> str:
    return reg.publish(make_staging(tmp_path / f"stage-{tag}"), make_card(), actor="test")


def approve(reg: Registry, version: str) -> None:
    reg.transition(version, State.AWAITING_APPROVAL, "test", "gates passed")
    reg.transition(version, State.APPROVED, "alice", "looks good")
