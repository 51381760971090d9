"""Teachers: where a student's training signal comes from.

A teacher is asked for what a distillation mode needs, and `trainer.py` wires the answer into a
loss without learning where it came from:
- text: responses for prompts (sequence-level KD; `distillation_mode` responses / hybrid), from a
  local model of any tokenizer or an OpenAI-compatible endpoint;
- distributions at the training rows' counted positions (logits / hybrid): a live local model
  (hidden states + LM head, the fast path), or a top-k cache written once and reused.
"""
