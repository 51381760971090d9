"""The teacher's side of the training stage: the tokenizer both models share, and the signal."""

from __future__ import annotations


from finetuner import distributed, logits, models, ui
from finetuner.config import RunConfig
from finetuner.recipe import Recipe


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
    from finetuner.teachers.signal import CachedTeacher, LiveTeacher

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
