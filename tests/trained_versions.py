"""MiniLM versions trained by `tuneloop train` on the real amazon sentences, as a user would train them.

The session trains each once (about a minute on 2 cores); the tests that need a real served model — drift
quality, the drift chain, continual training, the adapter — share them, and copy the registry before they
change it. A test fraction of 0.4 leaves 400 held-out amazon sentences: enough distinct in-domain traffic to
fill a 200-prediction window without repeating a sentence.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from adapter.training.data import LabelledData, load_labelled_data
from tests.conftest import AMAZON, IMDB, ROOT, YELP
from tuneloop.registry import Registry, State

TEST_FRACTION = 0.4
MAX_LENGTH = 64  # the sentences are short; the demo trains at this length too


@dataclass(frozen=True)
class TrainedVersion:
    registry: Path
    version: str
    data: LabelledData  # the splits it was trained and tested on
    validation_fraction: float

    def registry_copy(self, to: Path, *, promote: bool = True) -> Path:
        """A registry of the caller's own holding this version, in production unless ``promote`` is False."""
        shutil.copytree(self.registry, to)
        if promote:
            registry = Registry(to)
            registry.transition(self.version, State.APPROVED, "test", "approved in a test")
            registry.promote(self.version, "test", "promoted in a test")
        return to


def train_with_cli(root: Path, validation_fraction: float) -> TrainedVersion:
    """`tuneloop train` on the amazon sentences, with yelp and imdb as extra test sets; a registry that already
    holds such a version (a benchmark run again) is taken as it is."""
    if not (root.exists() and Registry(root).list_versions()):
        _train(root, validation_fraction)
    version = Registry(root).list_versions()[-1].version
    # The same split tuneloop train made (its default seed), to know which sentences it never saw.
    data = load_labelled_data(AMAZON, validation_fraction=validation_fraction, test_fraction=TEST_FRACTION)
    return TrainedVersion(root, version, data, validation_fraction)


def _train(root: Path, validation_fraction: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", "train", "--data", str(AMAZON), "--registry", str(root),
         "--validation-fraction", str(validation_fraction), "--test-fraction", str(TEST_FRACTION),
         "--max-length", str(MAX_LENGTH), "--extra-test", f"yelp={YELP}", "--extra-test", f"imdb={IMDB}",
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tuneloop train failed: {done.stderr[-3000:]}")
