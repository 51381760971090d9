"""The plan's time estimate, measured on this machine before "Start?": one training micro-batch of
the run's own rows through models of the run's shapes, with random weights (no checkpoint is read),
and a few decoding steps of the trained model, as the benchmark and a local teacher decode.

The probe yields a rate, training FLOPs a second counted the way `Recipe.training_flops` counts them,
so the run's other batches, longer or shorter, scale from it. The optimizer step is timed apart:
it costs the same every step whatever the tokens. A fixed, calibrated rate missed by 2.5x on a CPU
other than the one it was calibrated on (README, "The plan"); a measured one follows the CPU.

Each is timed several times and the fastest kept: another process on the machine only ever slows a
timing down, so the fastest is the one nearest what the run will do once it has the cores; when the
timings disagree widely the plan says so (`Measured.spread`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from finetuner.config import RunConfig
from finetuner.recipe import Recipe

# The probe builds the models once more beside nothing else; keep it to a share of free memory.
MEMORY_SHARE = 0.5
WARM_UP_TOKENS = 16  # a first, tiny batch pays one-off setup (threads, allocator) outside the timing
# The first full-size batch still pays for its shapes (allocations, kernel choice): one timing ran
# from 76 to 118 GFLOP/s on the same idle machine. The fastest of several is what training settles at.
TIMINGS = (3, 5)  # at least, at most
TIMING_BUDGET_S = 8.0  # past the least, no new timing starts after this long
DECODE_TOKENS = 8  # new tokens a row in one decoding timing


@dataclass(frozen=True)
class Measured:
    flops_per_second: float
    optimizer_seconds: float  # one optimizer step
    spread: float = 1.0  # the slowest training timing over the fastest
    decode_step_seconds: float | None = None  # one step decoding `decode_rows` rows with the trained model
    decode_rows: int = 0
    decode_one_seconds: float | None = None  # one step decoding a single row (the draft, a chat)


def fastest(timing, least: int = TIMINGS[0], most: int = TIMINGS[1],
            budget: float = TIMING_BUDGET_S) -> tuple[float, float]:
    """(fastest, slowest) of `least` to `most` calls of `timing` (each returns its seconds)."""
    started, seconds = time.perf_counter(), []
    while len(seconds) < most and (len(seconds) < least or time.perf_counter() - started < budget):
        seconds.append(timing())
    return min(seconds), max(seconds)


def why_not(recipe: Recipe) -> str | None:
    """Why no probe can stand for this run here, or None."""
    import torch

    from finetuner import distributed

    if torch.cuda.is_available():
        return "GPU runs are not probed"
    if distributed.world_size() > 1:
        return "processes probing side by side would time each other"
    if recipe.quantization or (recipe.runs_teacher and recipe.teacher_quantization):
        return "quantised models are not probed"
    return None


def measure(cfg: RunConfig, recipe: Recipe, data, tokenizer, decode_rows: int = 0) -> Measured:
    """Time a micro-batch (forward, loss, backward; the fastest of several), one optimizer step and,
    with `decode_rows`, a decoding step of that many held-out-like prompts; raises ProbeSkipped."""
    import torch

    student, teacher = _models(cfg, recipe, data)
    batch = _median_batch(data.train, cfg.batch_size, tokenizer)
    step = _distillation_step(cfg, student, teacher) if teacher is not None else _plain_step(student)
    warm = {key: value[:2, :WARM_UP_TOKENS] for key, value in batch.items()}
    step(warm)

    def timed() -> float:
        student.zero_grad(set_to_none=True)
        clock = time.perf_counter()
        step(batch)
        return time.perf_counter() - clock

    seconds, slowest = fastest(timed)

    tokens = batch["input_ids"].numel()
    label_tokens = int((batch["labels"][:, 1:] != -100).sum())
    rate = recipe.training_flops(tokens, label_tokens) / seconds
    trained = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    optimizer.step()  # the first step allocates the moments

    def optimizer_step() -> float:
        clock = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # the Trainer clips every step (max_grad_norm 1)
        optimizer.step()
        return time.perf_counter() - clock

    optimizer_seconds, _ = fastest(optimizer_step, budget=0.0)
    decode, one = _decode_step_seconds(student, data.train, tokenizer, decode_rows) if decode_rows else (None, None)
    return Measured(rate, optimizer_seconds, slowest / seconds, decode, decode_rows, one)


def _decode_step_seconds(model, train, tokenizer, rows: int) -> tuple[float, float]:
    """One greedy decoding step for `rows` prompts of about the median length, and for one prompt
    (the fastest of several timings of DECODE_TOKENS new tokens, the prompts' prefill included: left
    out, the random-weight model's steps alone came out 0.2x to 15x the trained model's)."""
    from finetuner import generation

    lengths = sorted(range(len(train)), key=lambda i: len(train[i]["input_ids"]))
    middle = train[lengths[len(lengths) // 2]]
    prompt = [t for t, label in zip(middle["input_ids"], middle["labels"]) if label == -100] \
        or middle["input_ids"][:WARM_UP_TOKENS]
    pad = generation.pad_id(tokenizer)
    model.eval()

    def decode(count: int, new_tokens: int) -> float:
        clock = time.perf_counter()
        generation.generate(model, [prompt] * count, new_tokens, pad, min_new_tokens=new_tokens)
        return time.perf_counter() - clock

    def step(count: int) -> float:
        decode(count, 2)  # generate's one-off setup for these shapes
        seconds, _ = fastest(lambda: decode(count, DECODE_TOKENS), budget=TIMING_BUDGET_S / 4)
        return seconds / DECODE_TOKENS

    return step(rows), step(1)


class ProbeSkipped(Exception):
    """The models would not fit in memory beside what is already there."""


def _models(cfg: RunConfig, recipe: Recipe, data):
    import torch
    from transformers import AutoModelForCausalLM

    from finetuner import adapters, models
    from finetuner.memory_plan import free_memory

    name, layers = recipe.trained, recipe.derived_layers
    live_teacher = recipe.runs_teacher
    student_params = models.parameter_count(name, layers)
    teacher_params = models.parameter_count(recipe.teacher) if live_teacher else 0
    need = student_params * 16 + teacher_params * 2  # fp32 weights, gradients, Adam's two moments; bf16 teacher
    if need > MEMORY_SHARE * free_memory()[1]:
        raise ProbeSkipped(f"the models need about {need / 2**30:.1f} GB to probe")

    config = models.load_config(name)
    if layers:
        config = models.student_config(config, list(range(layers)))
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    student.train()
    if recipe.adapter:
        student = adapters.apply_adapter(cfg, student, recipe.adapter, total_steps=recipe.steps(len(data.train)))
    teacher = None
    if live_teacher:
        precision = models.precision_policy()
        teacher = AutoModelForCausalLM.from_config(models.load_config(recipe.teacher), dtype=precision.teacher_dtype)
        teacher.eval().requires_grad_(False)
    return student, teacher


def _median_batch(train, batch_size: int, tokenizer) -> dict:
    """`batch_size` rows of about the median length: the Trainer groups rows by length, so a batch
    is as long as its rows."""
    from finetuner.data.preparing import make_collator

    lengths = sorted(range(len(train)), key=lambda i: len(train[i]["input_ids"]))
    middle = max(0, min(len(lengths) - batch_size, len(lengths) // 2 - batch_size // 2))
    rows = [train[i] for i in lengths[middle:middle + batch_size]]
    keep = ("input_ids", "attention_mask", "labels")
    return dict(make_collator(tokenizer)([{k: row[k] for k in keep if k in row} for row in rows]))


def _autocast():
    import torch

    from finetuner import models

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=models.precision_policy().bf16)


def _plain_step(model):
    """What the Trainer does for fine-tuning: the model's own loss over full logits."""
    def step(batch: dict) -> None:
        with _autocast():
            loss = model(**batch).loss
        loss.backward()
    return step


def _distillation_step(cfg: RunConfig, student, teacher):
    """What DistillationTrainer does: both decoders, then the chunked loss on counted positions."""
    from finetuner import logits
    from finetuner.teachers.signal import LiveTeacher

    head = logits.head_of(student)
    signal = LiveTeacher(teacher, cfg.temperature, min(head.vocab_rows, logits.head_of(teacher).vocab_rows),
                         cfg.divergence, cfg.jsd_beta)

    def step(batch: dict) -> None:
        with _autocast():
            out = logits.decoder_outputs(student, batch["input_ids"], batch["attention_mask"])
            result, _ = signal.loss(out, head, batch, cfg.alpha, None)
        result.loss.backward()
    return step
