"""Experiment tracking through the Trainer's own integrations (`report_to`).

All three work offline: TensorBoard writes event files into OUT/tensorboard, Trackio keeps its
runs in a local database (TRACKIO_DIR, by default ~/.cache/huggingface/trackio; a Space only with
TRACKIO_SPACE_ID), and W&B writes OUT/wandb, offline (`wandb sync` uploads later) unless you are logged in.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

TENSORBOARD_DIR = "tensorboard"
PROJECT = "finetuner"  # the project runs are grouped under (Trackio, W&B)
# What `pip install` needs for each; tensorboard is pinned in requirements-dev.txt.
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard==2.21.0"), "trackio": ("trackio", "trackio==0.43.0"),
             "wandb": ("wandb", "wandb==0.31.0")}


def missing_package(report_to: str) -> str | None:
    """Why `report_to` cannot work here (its package is not installed), or None."""
    if report_to not in _PACKAGES:
        return None
    module, pin = _PACKAGES[report_to]
    if importlib.util.find_spec(module) is None:
        return f"{report_to} is not installed; run `pip install {pin}`, or set report_to: none"
    return None


def report_to(name: str, out_dir: Path) -> list[str]:
    """The TrainingArguments.report_to list, with each integration pointed at this run."""
    if name == "none":
        return []
    if name == "tensorboard":
        # The callback reads this when the Trainer is built: one folder per run, beside its model.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out_dir) / TENSORBOARD_DIR)
    elif name == "wandb":
        if not os.environ.get("WANDB_DIR"):
            os.environ["WANDB_DIR"] = str(out_dir)  # OUT/wandb/offline-run-*, not ./wandb wherever we were started
        if not os.environ.get("WANDB_PROJECT"):
            os.environ["WANDB_PROJECT"] = PROJECT  # the Trainer's W&B callback reads this, not `project`
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"  # never stop at a login prompt
    return [name]


def finish(name: str) -> None:
    """End this training's tracker run. The Trainer's W&B callback leaves its run open until the
    process exits, so an `sft_baseline` trained next would log into the student's run."""
    if name == "wandb":
        import wandb

        wandb.finish()
