"""Which student layer learns from which teacher layer (`hidden_state_layers`); torch-free, so the
config checks and the plan can use it before anything heavy is imported.

- `auto` for a derived student: each kept layer learns from the teacher layer it was copied from
  (`student_layers.json`'s `kept`), so the match starts close and keeps what the copy preserved;
- `auto` for a separate student: its layers spread evenly over the teacher's (student layer i of S
  to teacher layer round((i + 1) * T / S) - 1, so the last meets the last);
- explicit `student:teacher` pairs of 0-based decoder-layer indices, e.g. `3:7,7:15`.
"""

from __future__ import annotations

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


def plan_rows(cfg) -> list[tuple[str, str]]:
    """The layer map as the plan shows it before "Start?" (configs only, nothing loaded)."""
    if not (cfg.is_distillation and cfg.hidden_state_weight > 0):
        return []
    from finetuner.sources import layer_count

    label = f"hidden states ({cfg.hidden_state_loss}, weight {cfg.hidden_state_weight:g})"
    pairs = parse_layer_pairs(cfg.hidden_state_layers)
    if pairs is not None:
        return [(label, f"student -> teacher layer: {describe(pairs)}")]
    teacher = layer_count(cfg.teacher)
    if cfg.student_layers is not None and cfg.student == cfg.teacher:
        return [(label, f"each of the {cfg.student_layers} kept layers -> the teacher layer it was copied from "
                        "(chosen at start, saved in student_layers.json)")]
    student = layer_count(cfg.student)
    if student and cfg.student_layers:
        student = min(student, cfg.student_layers)
    if not (student and teacher):
        return [(label, "student layers spread evenly over the teacher's (resolved when the models load)")]
    return [(label, f"student -> teacher layer: {describe(layer_map('auto', student, teacher))}")]
