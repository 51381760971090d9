"""What a run will do, worked out before "Start?" from tokenizers, model configs and the data
alone (no weights): the checks that would otherwise fail seconds into training (no usable
column, tokenizers that differ, an impossible student) and the derived facts the plan shows.

The time estimate is counted tokens x FLOPs per token / a rate. The rate is measured by a probe
step on this machine (probe.py); where no probe can run, a rate calibrated on one 2-core CPU
stands in, and the plan says which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.recipe import Recipe

# Effective training FLOP/s per CPU thread (bf16 autocast), from finetuner's DistillationTrainer in
# benchmarks/results/distill_speed-2026-11-24.json: 3.775 s a step of 8 GSM8K rows (about 1,000
# answer and 550 prompt tokens) on 2 idle cores, SmolLM2-135M teaching its 15-layer student:
# about 1.05 TFLOP a step by the count in `training_flops`, so 278 GFLOP/s, 139 per thread.
CPU_FLOPS_PER_CORE = 139e9
CALIBRATION = "calibrated on another 2-core CPU, not measured here"


@dataclass
class Preflight:
    """What the checks found; the training stage reuses the prepared data."""

    recipe: Recipe
    data: object  # data.PreparedData; None when the teacher writes the rows from documents
    tokenizer: object


def preflight(cfg: RunConfig) -> Preflight:
    """Load tokenizers, configs and the data; raise UserError for a run that cannot work."""
    from finetuner import models
    from finetuner.data.preparing import prepare
    from finetuner.teachers import topk_cache

    ui.step("Checking tokenizers, model configs and the data (no weights are loaded)")
    recipe = Recipe.of(cfg)
    tokenizer = models.load_tokenizer(recipe.trained)
    stands_in = topk_cache.stands_in_for_teacher(cfg)
    if stands_in:  # the teacher is not on this machine, nor needed
        ui.info(f"the teacher {cfg.teacher} is not here; its complete cache in {cfg.teacher_cache} stands in")
    elif recipe.signal != "none":  # the teacher's distributions are matched: one tokenizer
        teacher_tokenizer = tokenizer if recipe.trained == recipe.teacher else models.load_tokenizer(recipe.teacher)
        models.check_tokenizers_match(teacher_tokenizer, tokenizer)
    if recipe.distils and not cfg.teacher_api_base and not stands_in:
        for note in models.check_student_plan(recipe.teacher, recipe.trained, recipe.derived_layers):
            ui.warning(note)
    if not recipe.distils:
        models.load_config(recipe.trained)  # a causal LM, and readable
    check_logits(recipe, stands_in)
    if recipe.distils and cfg.questions_per_chunk:
        return Preflight(recipe, data=None, tokenizer=tokenizer)  # the teacher writes the rows after "Start?"
    # A teacher that writes replaces the responses later; the prompts are checked now.
    data = prepare(cfg, tokenizer)
    if recipe.signal != "none" and cfg.on_policy_fraction:
        from finetuner.objectives.on_policy import why_not_on_policy

        if problem := why_not_on_policy(data.format.kind):
            raise ui.UserError(problem)
    return Preflight(recipe, data=data, tokenizer=tokenizer)


def check_logits(recipe: Recipe, teacher_absent: bool) -> None:
    """Distilling from logits needs each model's real logits: refuse a family whose head finetuner
    does not reproduce, by name, before "Start?" (finetuner.logits)."""
    from finetuner import logits, models

    if recipe.signal == "none":
        return
    names = [recipe.trained] + ([] if teacher_absent or recipe.teacher == recipe.trained else [recipe.teacher])
    for name in names:
        if problem := logits.plan_problem(models.load_config(name)):
            raise ui.UserError(f"can't distil from logits with {name}: {problem}",
                               hint="use distillation_mode responses (the teacher's text, any family), or models "
                                    "of a family README's compatibility table lists")


# ---- derived facts --------------------------------------------------------------------------

def device_name() -> str:
    import torch

    from finetuner import models

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), {models.cpu_precision_reason()}"


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float | None  # the optimizer steps, not loading or benchmarking; None where not estimated
    how: str  # how it was made, for the plan


def estimate(cfg: RunConfig, pre: Preflight, dry_run: bool = False) -> TimeEstimate:
    """Training time from a probe step on this machine, else from the calibrated rate."""
    import torch

    from finetuner import probe

    if pre.data is None:  # no rows yet when the teacher writes them from documents
        return TimeEstimate(None, "not estimated: the teacher writes the rows after \"Start?\"")
    if not pre.data.stats.get("train_rows"):
        return TimeEstimate(0.0, "no rows to train on")
    why = "a dry run times nothing" if dry_run else probe.why_not(pre.recipe)
    if why is None:
        ui.step(f"Timing one training step on this machine ({cfg.batch_size} rows, random weights)")
        try:
            measured = probe.measure(cfg, pre.recipe, pre.data, pre.tokenizer)
        except probe.ProbeSkipped as exc:
            why = str(exc)
        except (MemoryError, RuntimeError) as exc:
            from finetuner.training.loop import is_out_of_memory, out_of_memory_error

            if not is_out_of_memory(exc):
                raise
            # One micro-batch did not fit: training would fail the same way, so say it before "Start?".
            raise out_of_memory_error("timing one training step (the run's batch does not fit)") from None
        else:
            seconds = _seconds(pre.recipe, pre.data, measured.flops_per_second, measured.optimizer_seconds)
            return TimeEstimate(seconds, f"measured: a probe step here ran {measured.flops_per_second / 1e9:.0f} "
                                     f"GFLOP/s{_on_policy_note(cfg)}")
    if torch.cuda.is_available():
        return TimeEstimate(None, f"not estimated: {why}")
    rate = CPU_FLOPS_PER_CORE * torch.get_num_threads()
    return TimeEstimate(_seconds(pre.recipe, pre.data, rate, 0.0), f"{CALIBRATION} ({why}){_busy_note()}")


def _seconds(recipe: Recipe, data, flops_per_second: float, optimizer_seconds: float) -> float:
    stats = data.stats
    total_steps = recipe.steps(stats["train_rows"])
    epochs_run = total_steps / recipe.steps_per_epoch(stats["train_rows"])
    tokens = sum(len(ids) for ids in data.train["input_ids"]) * epochs_run
    label_tokens = stats["train_label_tokens"] * epochs_run
    return recipe.training_flops(tokens, label_tokens) / flops_per_second + total_steps * optimizer_seconds


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


def derived_facts(cfg: RunConfig, pre: Preflight, time: TimeEstimate) -> list[tuple[str, str]]:
    """(label, value) rows for the plan: what the settings add up to."""
    from finetuner import disk
    from finetuner.summary import duration

    if pre.data is None:
        return [("device", device_name()),
                ("rows", f"questions the teacher writes from {cfg.dataset} ({cfg.questions_per_chunk} per chunk)"),
                ("disk needed", f"about {ui.size(disk.bytes_needed(pre.recipe))}")]

    stats = pre.data.stats
    total = pre.recipe.steps(stats["train_rows"])
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
    rows.append(("disk needed", f"about {ui.size(disk.bytes_needed(pre.recipe))}"))
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
    body.append(f"trained on: counted in the loss ({len(ids) - start} tokens)\n" if not pre.recipe.writes else
                "trained on: the teacher's response to this prompt, written after \"Start?\" (the dataset's "
                "reference stands in below)\n", style="bold")
    body.append(decode(ids[start:]), style="green")
    ui.console.print(Panel(body, title=f"Training example (1 of {len(train)}), exactly as tokenized",
                           title_align="left"))
