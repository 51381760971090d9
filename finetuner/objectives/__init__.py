"""Objectives: what the student learns from beyond `finetuner.losses` (the pure token-level loss).

One module per objective: the divergence on cached top-k teacher entries, on-policy
distillation (the student writes, the teacher grades), hidden-state matching.
"""
