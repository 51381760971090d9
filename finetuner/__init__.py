"""finetuner: a guided wizard for fine-tuning and distilling causal language models."""

__version__ = "2.1.0"
