"""The SFT baseline (`sft_baseline`): the distilled student's twin, fine-tuned plainly.

Same student (the same kept layers), same rows in the same order, same steps, seed and
learning rate; only alpha differs (1: cross-entropy on the references alone, so no teacher
is loaded). The benchmark then shows whether distillation beat plain fine-tuning, and by how much.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetuner import artifacts
from finetuner.config import RunConfig


def baseline_config(cfg: RunConfig) -> RunConfig:
    out = Path(cfg.output_dir) / artifacts.SFT_BASELINE_DIR
    # Cross-entropy alone: no divergence, hidden-state or on-policy term either.
    return dataclasses.replace(cfg, alpha=1.0, hidden_state_weight=0.0, on_policy_fraction=0.0, sft_baseline=False,
                               output_dir=str(out))


def train_sft_baseline(cfg: RunConfig, resume: bool = False):
    from finetuner.recipe import Recipe
    from finetuner.training import train

    kept = artifacts.read_student_layers(Path(cfg.output_dir))
    baseline = baseline_config(cfg)
    return train(baseline, Recipe.of(baseline), kept_layers=kept, resume=resume)
