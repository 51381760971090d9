"""Disk space for a run's output, checked from model configs before any weights load.

What a run writes, in fp32 (4 bytes a parameter): with full training, each of the Trainer's
`save_total_limit` (2) checkpoints holds the weights and AdamW's two moments (12 bytes a
parameter), plus the final model; with LoRA, checkpoints are small and the merged model is
the big file. Counting is exact: the model is built on the meta device, which allocates nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from finetuner import ui
from finetuner.recipe import Recipe

FP32_BYTES = 4
CHECKPOINTS_KEPT = 2  # TrainingArguments.save_total_limit in training/arguments.py
MARGIN = 1.1  # tokenizer files, optimizer bookkeeping, the held-out rows and logs


def bytes_needed(recipe: Recipe) -> int:
    """About how many bytes the run writes into its output directory."""
    from finetuner import models

    weights = models.parameter_count(recipe.trained, recipe.derived_layers) * FP32_BYTES
    # An adapter's checkpoints are a few MB; the merged (or, unmerged, the base-sized) model dominates.
    checkpoints = CHECKPOINTS_KEPT * 3 * weights if recipe.adapter is None else 0
    return int((weights + checkpoints) * MARGIN)


def free_bytes(directory: Path) -> int:
    """Free space on the filesystem that holds (or will hold) `directory`."""
    existing = directory.expanduser().resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_space(recipe: Recipe, output_dir: str) -> None:
    out = Path(output_dir)
    needed, free = bytes_needed(recipe), free_bytes(out)
    if needed > free:
        full = recipe.adapter is None
        what = "checkpoints and the final model" if full else "the final model"
        raise ui.UserError(
            f"not enough disk space for {out}: about {ui.size(needed)} needed ({what}), {ui.size(free)} free",
            hint="free some space or choose an output_dir on a larger disk"
                 + ("; student_training: lora writes much smaller checkpoints" if full else ""))

