"""Hidden-state distillation: the student's intermediate representations match the teacher's
at the layer pairs of `finetuner.objectives.layer_map`.

When the widths differ, a learned linear projection (student width -> teacher width, one per pair)
trains with the student. While training it is registered inside the student (`attach`), so what
trains the student trains it the same way: DDP all-reduces its gradients across processes, the
Trainer clips them with the student's, and checkpoints hold it (`ProjectionCheckpoint` for adapter
checkpoints, which hold only the adapter). The training stage removes it, by its name `TRAINING_ONLY`,
before the final save, so the saved student is a plain model of its own architecture.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetuner.objectives.layer_map import LayerPairs, layer_map

TRAINING_ONLY = "hidden_state_projection"  # the submodule name inside the student while it trains
CHECKPOINT_FILE = "hidden_state_projection.pt"


class HiddenStateLoss(nn.Module):
    """Sum over counted positions of the per-position distance between (projected) student states and
    teacher states, averaged over the layer pairs. The caller divides by the token count, as for CE.

    `mse`: mean squared difference over the hidden dimension (in the activations' units, which vary
    between models); `cosine`: 1 - cosine similarity (scale-free, in [0, 2]).
    """

    def __init__(self, pairs: LayerPairs, student_width: int, teacher_width: int, kind: str = "mse"):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"hidden_state_loss must be mse or cosine (got {kind!r})")
        self.pairs = list(pairs)
        self.kind = kind
        # One projection per pair when the widths differ; none (identity) when they match.
        self.projections = nn.ModuleList(nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs) \
            if student_width != teacher_width else None

    def forward(self, student_states: Iterable[Tensor], teacher_states: Iterable[Tensor], mask: Tensor) -> Tensor:
        """`*_states`: each model's per-layer outputs (`hidden_states[1:]` of a decoder), [B, L, H] each;
        `mask`: [B, L] bool, the positions that count."""
        student_states, teacher_states = list(student_states), list(teacher_states)
        total = 0.0
        for index, (s, t) in enumerate(self.pairs):
            student = student_states[s][mask].float()
            teacher = teacher_states[t][mask].detach().float()
            if self.projections is not None:
                student = self.projections[index](student)
            if self.kind == "mse":
                distance = (student - teacher).pow(2).mean(dim=-1)
            else:
                distance = 1 - F.cosine_similarity(student, teacher, dim=-1)
            total = total + distance.sum()
        return total / max(len(self.pairs), 1)


def build(spec: str, kind: str, student, teacher, kept: list[int] | None) -> HiddenStateLoss:
    """The loss module for these two models (projection on the student's device, fp32)."""
    pairs = layer_map(spec, student.config.num_hidden_layers, teacher.config.num_hidden_layers, kept)
    module = HiddenStateLoss(pairs, student.config.hidden_size, teacher.config.hidden_size, kind)
    return module.to(device=next(student.parameters()).device, dtype=torch.float32)


def attach(student, loss: HiddenStateLoss) -> None:
    """Register `loss` (its projections) in the transformers model inside `student`'s wrappers, before
    the Trainer builds its optimizer and wraps the model for DDP."""
    from finetuner.logits import unwrapped

    unwrapped(student).add_module(TRAINING_ONLY, loss)


def restore(loss: HiddenStateLoss, checkpoint: str | None) -> None:
    """On --resume: the projection as the checkpoint left it."""
    from pathlib import Path

    path = Path(checkpoint) / CHECKPOINT_FILE if checkpoint else None
    if path is not None and path.is_file():
        loss.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def checkpoint_callback(loss: HiddenStateLoss):
    """A TrainerCallback that writes the projection into each checkpoint (the main process only)."""
    from pathlib import Path

    from transformers import TrainerCallback

    class ProjectionCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                torch.save(loss.state_dict(), folder / CHECKPOINT_FILE)

    return ProjectionCheckpoint()
