"""Hidden-state distillation: the student's intermediate representations match the teacher's.

Which student layer learns from which teacher layer (`hidden_state_layers`):
- `auto` for a derived student: each kept layer learns from the teacher layer it was copied from
  (`student_layers.json`'s `kept`), so the match starts close and keeps what the copy preserved;
- `auto` for a separate student: its layers spread evenly over the teacher's (student layer i of S
  to teacher layer round((i + 1) * T / S) - 1, so the last meets the last);
- explicit `student:teacher` pairs of 0-based decoder-layer indices, e.g. `3:7,7:15`.

When the widths differ, a learned linear projection (student width -> teacher width, one per pair)
trains with the student. It lives beside the model, in the optimizer only, so `save_pretrained`
never writes it: the saved student is a plain model of its own architecture.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerPairs = list[tuple[int, int]]


def parse_layer_pairs(spec: str) -> LayerPairs | None:
    """`auto` -> None; `3:7, 7:15` -> [(3, 7), (7, 15)]. Raises ValueError with a readable reason."""
    text = spec.strip().lower()
    if text == "auto":
        return None
    pairs = []
    for part in text.replace(" ", "").split(","):
        left, sep, right = part.partition(":")
        if not (sep and left.isdigit() and right.isdigit()):
            raise ValueError(f"must be 'auto' or student:teacher layer pairs like '3:7,7:15' (got {spec!r})")
        pairs.append((int(left), int(right)))
    if len({s for s, _ in pairs}) != len(pairs):
        raise ValueError(f"each student layer may appear once (got {spec!r})")
    return pairs


def layer_map(spec: str, student_layers: int, teacher_layers: int, kept: list[int] | None = None) -> LayerPairs:
    """The (student layer, teacher layer) pairs to match. `kept`: a derived student's source layers."""
    pairs = parse_layer_pairs(spec)
    if pairs is None:
        if kept is not None and len(kept) == student_layers:
            return list(enumerate(kept))
        return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]
    for s, t in pairs:
        if s >= student_layers or t >= teacher_layers:
            raise ValueError(f"layer pair {s}:{t} is out of range: the student has {student_layers} layers "
                             f"(0-{student_layers - 1}), the teacher {teacher_layers} (0-{teacher_layers - 1})")
    return pairs


def describe(pairs: LayerPairs) -> str:
    """The map as the plan shows it: `0->0, 1->2, ...` (student -> teacher)."""
    return ", ".join(f"{s}->{t}" for s, t in pairs)


class HiddenStateLoss(nn.Module):
    """Sum over counted positions of the per-position distance between (projected) student states and
    teacher states, averaged over the layer pairs. The caller divides by the token count, as for CE.

    `mse`: mean squared difference over the hidden dimension (scale-dependent: SmolLM2's residual
    stream is large, so weights well below 1 suit it); `cosine`: 1 - cosine similarity (scale-free).
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
