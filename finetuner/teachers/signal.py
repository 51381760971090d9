"""The teacher's distribution at the positions that count, behind one interface.

The distillation trainer asks a signal for `loss(...)` on a batch of the student's decoder outputs
and never learns where the teacher's numbers came from:
- `LiveTeacher`: a teacher model on this machine runs its forward on each batch (it also grades
  on-policy samples, and gives hidden states for the hidden-state term);
- `CachedTeacher`: the teacher's top-k entries are read from a `teacher_cache` built beforehand.
A new source is one class here with the same two members, one branch in `open_signal`, and one
line in `finetuner.recipe`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from finetuner import distributed, logits, models, ui
from finetuner.config import RunConfig
from finetuner.losses import KDLoss, chunk_rows, kd_loss_from_hidden, select_targets
from finetuner.recipe import Recipe


class TeacherSignal(Protocol):
    def loss(self, student_out, student_head, inputs: dict, alpha: float, num_items_in_batch,
             hidden_states: bool = False) -> tuple[KDLoss, tuple | None]:
        """alpha * CE + (1 - alpha) * T^2 * D on `inputs["labels"]`, and the teacher's hidden states
        (per layer) when asked."""

    def rows(self, train):
        """The training rows as this signal needs them (the cache adds each row's index)."""


class LiveTeacher:
    def __init__(self, model, temperature: float, vocab_size: int | None, divergence: str = "forward_kl",
                 beta: float = 0.5):
        self.model = model
        self.head = logits.head_of(model)
        self.temperature, self.vocab_size = temperature, vocab_size
        self.divergence, self.beta = divergence, beta
        self.chunk_size = chunk_rows(self.head.vocab_rows)

    def loss(self, student_out, student_head, inputs, alpha, num_items_in_batch, hidden_states=False):
        with torch.no_grad():
            teacher_out = self.model.get_decoder()(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"],
                                                   output_hidden_states=hidden_states)
        result = kd_loss_from_hidden(student_out.last_hidden_state, teacher_out.last_hidden_state, student_head,
                                     self.head, inputs["labels"], temperature=self.temperature, alpha=alpha,
                                     num_items_in_batch=num_items_in_batch, vocab_size=self.vocab_size,
                                     chunk_size=self.chunk_size, divergence=self.divergence, beta=self.beta)
        return result, (teacher_out.hidden_states if hidden_states else None)

    def rows(self, train):
        return train


class CachedTeacher:
    """Forward KL on the cached top-k entries. Held-out rows are not in the cache, and no teacher is
    loaded, so they score the student's CE alone (the divergence is NaN there, left out of the logs).
    It gives no hidden states: the hidden-state term needs a live teacher (config_checks refuses it)."""

    def __init__(self, cache, vocab_size: int):
        self.cache = cache  # teachers.topk_cache.TopKCache
        self.temperature = cache.temperature
        self.vocab_size = vocab_size

    def loss(self, student_out, student_head, inputs, alpha, num_items_in_batch, hidden_states=False):
        from finetuner.objectives.topk import TopKEntries, topk_kd_loss_from_hidden
        from finetuner.teachers.topk_cache import ROW_INDEX

        hidden = student_out.last_hidden_state
        chunk_size = chunk_rows(student_head.vocab_rows)
        if ROW_INDEX not in inputs:
            return held_out_ce(hidden, student_head, inputs["labels"], self.vocab_size, chunk_size), None
        entries = self.cache.entries_for_batch(inputs[ROW_INDEX], inputs["labels"])
        entries = TopKEntries(*(t.to(hidden.device) for t in entries))
        return topk_kd_loss_from_hidden(hidden, student_head, inputs["labels"], entries, vocab_size=self.vocab_size,
                                        temperature=self.temperature, alpha=alpha,
                                        num_items_in_batch=num_items_in_batch, chunk_size=chunk_size), None

    def rows(self, train):
        from finetuner.teachers.topk_cache import with_row_index

        return with_row_index(train)


def held_out_ce(student_hidden, student_head, labels, vocab_size: int, chunk_size: int) -> KDLoss:
    """The student's CE on counted positions, chunk by chunk, as in training; the divergence NaN."""
    import torch.nn.functional as F

    mask, targets = select_targets(labels)
    rows = student_hidden[:, :-1][mask]
    ce = rows.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_size):
        chunk_logits = student_head(rows[start:start + chunk_size])[..., :vocab_size]
        ce = ce + F.cross_entropy(chunk_logits.float(), targets[start:start + chunk_size], reduction="sum")
    ce = ce / max(len(targets), 1)
    return KDLoss(ce, ce.detach(), torch.full_like(ce, float("nan")))


# ---- opening the signal for a run -------------------------------------------------------

def shared_tokenizer(cfg: RunConfig, recipe: Recipe):
    """The trained model's tokenizer, and the vocabulary it shares with the teacher (None without a
    teacher signal). With a complete cache and no teacher on this machine, the cache's fingerprint
    stands in for the teacher's tokenizer (it is checked against the student's when the cache opens)."""
    from finetuner.teachers import topk_cache

    if recipe.signal == "none":
        return models.load_tokenizer(recipe.trained), None
    if topk_cache.stands_in_for_teacher(cfg):
        return models.load_tokenizer(recipe.trained), topk_cache.stored_vocab_size(cfg)
    teacher_tokenizer = models.load_tokenizer(recipe.teacher)
    student_tokenizer = teacher_tokenizer if recipe.trained == recipe.teacher else models.load_tokenizer(recipe.trained)
    vocab_size = models.check_tokenizers_match(teacher_tokenizer, student_tokenizer)
    for note in models.check_student_plan(recipe.teacher, recipe.trained, recipe.derived_layers):  # configs only
        ui.warning(note)
    return student_tokenizer, vocab_size


def open_signal(cfg: RunConfig, recipe: Recipe, train_rows, tokenizer, vocab_size: int, written=None,
                device=None, student=None):
    """The teacher's signal for this recipe: a `CachedTeacher` (the cache completed first, loading the
    teacher only if it is not), or a `LiveTeacher` (the teacher loaded on `device`)."""
    if recipe.signal == "cache":
        from finetuner.teachers import topk_build

        # Under a launcher the main process fills the cache; the others then open the complete one.
        cache = distributed.main_process_first(
            lambda: topk_build.ensure(cfg, train_rows, tokenizer, vocab_size,
                                      lambda: load_teacher(cfg.teacher, cfg.teacher_quantization, written)))
        return CachedTeacher(cache, vocab_size)
    teacher = load_teacher(recipe.teacher, recipe.teacher_quantization, written, device)
    if student is not None:
        ui.info(f"teacher {models.count_parameters(teacher) / 1e6:.1f}M parameters, "
                f"student {models.count_parameters(student) / 1e6:.1f}M")
    return LiveTeacher(teacher, cfg.temperature, vocab_size, cfg.divergence, cfg.jsd_beta)


def load_teacher(name: str, quantization: str | None, written=None, device=None):
    """The teacher, frozen: the weights that just wrote the responses (hybrid), or loaded now.
    Its head is checked against its own forward: a family whose logits finetuner does not
    reproduce is refused here, before any step trains on them."""
    precision = models.precision_policy()
    if written is not None and written.model is not None:  # hybrid: the teacher that just wrote
        ui.info(f"Teacher {name}: the weights that wrote the responses, reused for its logits")
        teacher, written.model = written.model, None  # held by the trainer alone, freed with it
        teacher = teacher.to(device) if device is not None else teacher
    else:
        ui.step(f"Loading teacher {name} ({quantization or str(precision.teacher_dtype).removeprefix('torch.')})")
        teacher = models.load_teacher(name, precision, quantization)
        if device is not None and not quantization:
            teacher.to(device)  # this rank's device under a launcher
    logits.check(teacher, "teacher")
    return teacher
