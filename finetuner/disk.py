"""Disk space for a run's output, checked from model configs before any weights load.

What a run writes, in fp32 (4 bytes a parameter): with full training, each of the Trainer's
`save_total_limit` (2) checkpoints holds the weights and AdamW's two moments (12 bytes a
parameter), plus the final model; with LoRA, checkpoints are small and the merged model is
the big file. Counting is exact: the model is built on the meta device, which allocates nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from finetuner import models, ui
from finetuner.config import RunConfig

FP32_BYTES = 4
CHECKPOINTS_KEPT = 2  # TrainingArguments.save_total_limit in trainer.py
MARGIN = 1.1  # tokenizer files, optimizer bookkeeping, the held-out rows and logs


def parameter_count(name: str, keep_layers: int | None = None) -> int:
    """Parameters of `name` (with only `keep_layers` decoder layers, for a derived student)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = models.load_config(name)
    if keep_layers is not None:  # which layers are kept does not change the count
        config = models.student_config(config, models.student_layer_indices(config.num_hidden_layers, keep_layers))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config leaves a tied LM head separate; count it once, as on disk
    return models.count_parameters(model)


def trains_all_weights(cfg: RunConfig) -> bool:
    """Whether checkpoints hold full weights and optimizer state (else a small adapter's)."""
    return not cfg.uses_lora


def bytes_needed(cfg: RunConfig) -> int:
    """About how many bytes the run writes into its output directory."""
    params = parameter_count(cfg.student, cfg.student_layers) if cfg.is_distillation else parameter_count(cfg.model)
    weights = params * FP32_BYTES
    # LoRA: adapter checkpoints are a few MB; the merged (or, unmerged, the base-sized) model dominates.
    checkpoints = CHECKPOINTS_KEPT * 3 * weights if trains_all_weights(cfg) else 0
    return int((weights + checkpoints) * MARGIN)


def free_bytes(directory: Path) -> int:
    """Free space on the filesystem that holds (or will hold) `directory`."""
    existing = directory.expanduser().resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_space(cfg: RunConfig) -> None:
    out = Path(cfg.output_dir)
    needed, free = bytes_needed(cfg), free_bytes(out)
    if needed > free:
        full = trains_all_weights(cfg)
        what = "checkpoints and the final model" if full else "the final model"
        raise ui.UserError(
            f"not enough disk space for {out}: about {ui.size(needed)} needed ({what}), {ui.size(free)} free",
            hint="free some space or choose an output_dir on a larger disk"
                 + ("; student_training: lora writes much smaller checkpoints" if full else ""))

