"""tuneloop: serve a fine-tuned text classifier and keep it fit."""

__version__ = "0.1.0"
