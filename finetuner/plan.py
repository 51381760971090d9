"""What a run will do, worked out before "Start?" from tokenizers, model configs and the data
alone (no weights): the checks that would otherwise fail seconds into training (no usable
column, tokenizers that differ, an impossible student) and the derived facts the plan shows.

The time estimate is counted tokens x FLOPs per token / a rate. The rate is measured by a probe
step on this machine (probe.py); where no probe can run, a rate calibrated on one 2-core CPU
stands in, and the plan says which.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from finetuner import ui
from finetuner.config import RunConfig

# Effective training FLOP/s per CPU thread (bf16 autocast), from finetuner's DistillationTrainer in
# benchmarks/results/distill_speed-2026-11-24.json: 3.775 s a step of 8 GSM8K rows (about 1,000
# answer and 550 prompt tokens) on 2 idle cores, SmolLM2-135M teaching its 15-layer student:
# about 1.05 TFLOP a step by the count in `training_flops`, so 278 GFLOP/s, 139 per thread.
CPU_FLOPS_PER_CORE = 139e9
CALIBRATION = "calibrated on another 2-core CPU, not measured here"


@dataclass
class Preflight:
    """What the checks found; the trainer reuses the prepared data."""

    data: object  # data.PreparedData; None when the teacher writes the rows from documents
    tokenizer: object


def preflight(cfg: RunConfig) -> Preflight:
    """Load tokenizers, configs and the data; raise UserError for a run that cannot work."""
    from finetuner import models
    from finetuner.data.preparing import prepare

    ui.step("Checking tokenizers, model configs and the data (no weights are loaded)")
    from finetuner.teachers import topk_cache

    if cfg.is_distillation:
        tokenizer = models.load_tokenizer(cfg.student)
        if topk_cache.stands_in_for_teacher(cfg):  # issue 12: the teacher is not on this machine, nor needed
            ui.info(f"the teacher {cfg.teacher} is not here; its complete cache in {cfg.teacher_cache} stands in")
        elif cfg.distillation_mode != "responses":  # the teacher's distributions are matched: one tokenizer
            teacher_tokenizer = tokenizer if cfg.student == cfg.teacher else models.load_tokenizer(cfg.teacher)
            models.check_tokenizers_match(teacher_tokenizer, tokenizer)
        if not cfg.teacher_api_base and not topk_cache.stands_in_for_teacher(cfg):
            for note in models.check_student_plan(cfg.teacher, cfg.student, cfg.student_layers):
                ui.warning(note)
    else:
        tokenizer = models.load_tokenizer(cfg.model)
        models.load_config(cfg.model)  # a causal LM, and readable
    if cfg.is_distillation and cfg.questions_per_chunk:
        return Preflight(data=None, tokenizer=tokenizer)  # the teacher writes the rows after "Start?"
    # A teacher that writes replaces the responses later; the prompts are checked now.
    return Preflight(data=prepare(cfg, tokenizer), tokenizer=tokenizer)


# ---- derived facts --------------------------------------------------------------------------

def steps(cfg: RunConfig, train_rows: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(math.ceil(train_rows / cfg.batch_size) / cfg.gradient_accumulation)
    return max(1, per_epoch * cfg.epochs)


def device_name() -> str:
    import torch

    from finetuner import models

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), {models.cpu_precision_reason()}"


def _trained_model(cfg: RunConfig) -> str:
    return cfg.student if cfg.is_distillation else cfg.model


def _head_params(name: str) -> int:
    from finetuner import models

    config = models.load_config(name)
    return config.vocab_size * config.hidden_size


def uses_live_teacher(cfg: RunConfig) -> bool:
    """Whether the teacher runs forward during training, as trainer.train_distillation decides: not in
    responses mode, not with a complete teacher cache (issue 12), not when the student trains plainly."""
    from finetuner.teachers.topk_cache import is_complete

    return cfg.is_distillation and cfg.distillation_mode != "responses" and not is_complete(cfg) \
        and not cfg.trains_plainly


def training_flops(cfg: RunConfig, tokens: int, label_tokens: int) -> float:
    """Training FLOPs for `tokens` input tokens of which `label_tokens` count in the loss.

    Forward is 2 FLOPs per parameter per token, backward 4 (2 with frozen weights, as under LoRA).
    When distilling, finetuner runs both LM heads on counted positions only."""
    from finetuner import disk

    student = disk.parameter_count(_trained_model(cfg), cfg.student_layers if cfg.is_distillation else None)
    head = _head_params(_trained_model(cfg))
    train_factor = 4 if cfg.uses_lora else 6
    if getattr(cfg, "gradient_checkpointing", False):
        train_factor += 2  # the forward pass runs again during backward
    if not uses_live_teacher(cfg):
        return train_factor * student * tokens
    teacher = disk.parameter_count(cfg.teacher)
    teacher_head = _head_params(cfg.teacher)
    body = train_factor * (student - head) * tokens + 2 * (teacher - teacher_head) * tokens
    heads = (train_factor * head + 2 * teacher_head) * label_tokens
    return body + heads


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # the optimizer steps, not loading or benchmarking; None where not estimated
    how: str  # how it was made, for the plan


def estimate(cfg: RunConfig, pre: Preflight, dry_run: bool = False) -> Estimate:
    """Training time from a probe step on this machine, else from the calibrated rate."""
    import torch

    from finetuner import probe

    if pre.data is None:  # no rows yet when the teacher writes them from documents
        return Estimate(None, "not estimated: the teacher writes the rows after \"Start?\"")
    if not pre.data.stats.get("train_rows"):
        return Estimate(0.0, "no rows to train on")
    why = "a dry run times nothing" if dry_run else probe.why_not(cfg)
    if why is None:
        ui.step(f"Timing one training step on this machine ({cfg.batch_size} rows, random weights)")
        try:
            measured = probe.measure(cfg, pre.data, pre.tokenizer)
        except probe.ProbeSkipped as exc:
            why = str(exc)
        except (MemoryError, RuntimeError) as exc:
            from finetuner.trainer import is_out_of_memory, out_of_memory_error

            if not is_out_of_memory(exc):
                raise
            # One micro-batch did not fit: training would fail the same way, so say it before "Start?".
            raise out_of_memory_error("timing one training step (the run's batch does not fit)") from None
        else:
            seconds = _seconds(cfg, pre.data, measured.flops_per_second, measured.optimizer_seconds)
            return Estimate(seconds, f"measured: a probe step here ran {measured.flops_per_second / 1e9:.0f} "
                                     f"GFLOP/s{_on_policy_note(cfg)}")
    if torch.cuda.is_available():
        return Estimate(None, f"not estimated: {why}")
    rate = CPU_FLOPS_PER_CORE * torch.get_num_threads()
    return Estimate(_seconds(cfg, pre.data, rate, 0.0), f"{CALIBRATION} ({why}){_busy_note()}")


def _seconds(cfg: RunConfig, data, flops_per_second: float, optimizer_seconds: float) -> float:
    stats = data.stats
    total_steps = steps(cfg, stats["train_rows"])
    epoch_steps = max(1, math.ceil(math.ceil(stats["train_rows"] / cfg.batch_size) / cfg.gradient_accumulation))
    epochs_run = total_steps / epoch_steps
    tokens = sum(len(ids) for ids in data.train["input_ids"]) * epochs_run
    label_tokens = stats["train_label_tokens"] * epochs_run
    return training_flops(cfg, tokens, label_tokens) / flops_per_second + total_steps * optimizer_seconds


def _on_policy_note(cfg: RunConfig) -> str:
    if cfg.is_distillation and cfg.on_policy_fraction:
        return "; the student's on-policy sampling is not included"
    return ""


def _busy_note() -> str:
    """The calibration is for idle cores; other processes competing for them slow training down."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    if load <= cores * 1.25:
        return ""
    return f"; the machine is busy now (load {load:.1f} on {cores} cores), so expect it to take longer"


def derived_facts(cfg: RunConfig, pre: Preflight, time: Estimate) -> list[tuple[str, str]]:
    """(label, value) rows for the plan: what the settings add up to."""
    from finetuner import disk
    from finetuner.summary import duration

    if pre.data is None:
        return [("device", device_name()),
                ("rows", f"questions the teacher writes from {cfg.dataset} ({cfg.questions_per_chunk} per chunk)"),
                ("disk needed", f"about {disk._gb(disk.bytes_needed(cfg))}")]

    stats = pre.data.stats
    total = steps(cfg, stats["train_rows"])
    effective = cfg.batch_size * cfg.gradient_accumulation
    rows = [
        ("device", device_name()),
        ("rows", f"{stats['train_rows']} to train on, {stats['eval_rows']} held out"
                 f" ({pre.data.format.description()})"),
        ("optimizer steps", f"{total}" + ("" if cfg.max_steps else f" ({cfg.epochs} epoch{'s' * (cfg.epochs > 1)})")),
        ("effective batch", f"{effective} rows ({cfg.batch_size} x {cfg.gradient_accumulation} accumulation)"),
    ]
    rows.append(("estimated training time",
                 f"about {duration(time.seconds)} ({time.how})" if time.seconds is not None else time.how))
    rows.append(("disk needed", f"about {disk._gb(disk.bytes_needed(cfg))}"))
    return rows


def plan_warnings(cfg: RunConfig, pre: Preflight) -> list[str]:
    from finetuner.config import applies

    notes = []
    if pre.data is None:
        return notes
    held = pre.data.stats["eval_rows"]
    if cfg.benchmark and applies("benchmark", cfg):
        if pre.data.format.kind == "text":
            notes.append("the benchmark will be skipped: plain text has no prompts and answers to score")
        elif cfg.benchmark_samples > held:
            notes.append(f"benchmark_samples is {cfg.benchmark_samples} but only {held} rows are held out; "
                         f"the benchmark will use {held} (raise eval_fraction or max_samples for more)")
    return notes


# ---- one formatted example ------------------------------------------------------------------

def show_example(pre: Preflight) -> None:
    """One training row as the model sees it, split where the loss starts counting."""
    from rich.panel import Panel
    from rich.text import Text

    if pre.data is None:
        return
    train = pre.data.train
    if not len(train):
        return
    ids, labels = train[0]["input_ids"], train[0]["labels"]
    start = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    decode = pre.tokenizer.decode
    body = Text()
    if start:
        body.append(f"prompt: masked, not in the loss ({start} tokens)\n", style="bold")
        body.append(decode(ids[:start]) + "\n", style="dim")
    body.append(f"trained on: counted in the loss ({len(ids) - start} tokens)\n", style="bold")
    body.append(decode(ids[start:]), style="green")
    ui.console.print(Panel(body, title=f"Training example (1 of {len(train)}), exactly as tokenized",
                           title_align="left"))
