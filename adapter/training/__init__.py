"""Fine-tuning a pre-trained encoder for text classification."""
