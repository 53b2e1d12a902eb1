"""The contract with training: a version `tuneloop train` registers has a reference the monitor can use."""

from __future__ import annotations

import numpy as np

from monitoring.monitor import DriftMonitor
from monitoring.reference import RegistryReferences
from monitoring.window import Observation
from tests.model_versions import train_tiny_version
from tuneloop.registry import Registry
from tuneloop.settings import MonitorSettings


def test_monitor_reads_a_trained_versions_reference(tmp_path, tiny_bert, small_amazon):
    root = tmp_path / "registry"
    version = train_tiny_version(root, small_amazon, tiny_bert)
    references = RegistryReferences(Registry(root))
    sample = references(version)
    assert len(sample.labels) == sample.data.probabilities.shape[1]
    assert sample.data.texts is not None and len(sample.data) >= 10

    # Replaying the reference itself must not look like drift.
    data = sample.data
    n = len(data)
    monitor = DriftMonitor(MonitorSettings(window_mode="count", window_size=n, window_step=n), references, keep_reports=False)
    evaluations = [
        e
        for i in range(n)
        if (
            e := monitor.observe(
                Observation(
                    version,
                    data.embeddings[i],
                    data.probabilities[i],
                    int(data.predictions[i]),
                    str(data.texts[i]),
                    1e9 + i,
                )
            )
        )
    ]
    assert len(evaluations) == 1 and not evaluations[0].failed
    scores = evaluations[0].scores()
    assert set(scores) == {"embedding", "prediction", "confidence", "text_length", "text_oov"}
    assert scores["prediction"] < 1e-6 and scores["confidence"] < 1e-6 and scores["text_length"] < 1e-6
    assert np.isfinite(list(scores.values())).all()
