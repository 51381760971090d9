"""What a run will do, worked out before "Start?" from tokenizers, model configs and the data
alone (no weights): the checks that would otherwise fail seconds into training (no usable
column, tokenizers that differ, an impossible student) and the derived facts the plan shows.

The time of each phase is counted work over a rate (time_plan.py). The rates are measured by a
probe on this machine (probe.py); where no probe can run, rates calibrated on one 2-core CPU stand
in, and the plan says which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.recipe import Recipe
from finetuner.time_plan import TimeEstimate


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


# ---- the plan shown before "Start?" -------------------------------------------------------------

def check_and_show(cfg: RunConfig, dry_run: bool) -> tuple[Preflight, TimeEstimate]:
    """Everything cheap that could fail, then the example and the plan: (checked data, estimate)."""
    checked = preflight(cfg)
    show_example(checked)
    time = estimate(cfg, checked, dry_run=dry_run)
    show(cfg, checked, time)
    return checked, time


def show(cfg: RunConfig, checked: Preflight, time: TimeEstimate) -> None:
    """The settings, then what they add up to; each module that knows a fact adds its rows here."""
    from finetuner.config_checks import warnings_for
    from finetuner.memory_plan import plan_rows as memory_rows
    from finetuner.objectives.layer_map import plan_rows as hidden_state_rows
    from finetuner.teachers.estimate import plan_rows as generation_rows
    from finetuner.teachers.topk_cache import plan_rows as cache_rows

    rows = list(cfg.to_answers().items())
    rows += derived_facts(cfg, checked, time)
    rows += hidden_state_rows(cfg)
    rows += cache_rows(cfg, checked.data)
    rows += generation_rows(cfg, checked)
    rows += memory_rows(cfg)
    ui.table("Plan", rows)
    for note in [*warnings_for(cfg), *plan_warnings(cfg, checked, time)]:
        ui.warning(note)


# ---- derived facts --------------------------------------------------------------------------

def device_name(cfg: RunConfig | None = None) -> str:
    import torch

    from finetuner import models

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    teacher = cfg is None or cfg.is_distillation and not cfg.teacher_api_base
    precision = models.cpu_precision_reason()
    if not teacher:  # a fine-tuning plan has no teacher to run in bf16
        precision = precision.replace(", teacher in bf16", "")
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), {precision}"


def estimate(cfg: RunConfig, pre: Preflight, dry_run: bool = False) -> TimeEstimate:
    """Every phase's time, from a probe on this machine, else from the calibrated rates."""
    from finetuner import probe, time_plan

    if pre.data is None or not pre.data.stats.get("train_rows"):
        return time_plan.estimate(cfg, pre, time_plan.calibrated("no rows to probe yet"))
    why = "a dry run times nothing" if dry_run else probe.why_not(pre.recipe)
    if why is None:
        ui.step(f"Timing training steps and decoding on this machine ({cfg.batch_size} rows, random weights)")
        try:
            measured = probe.measure(cfg, pre.recipe, pre.data, pre.tokenizer, decode_rows=_decode_rows())
        except probe.ProbeSkipped as exc:
            why = str(exc)
        except (MemoryError, RuntimeError) as exc:
            from finetuner.training.loop import is_out_of_memory, out_of_memory_error

            if not is_out_of_memory(exc):
                raise
            # One micro-batch did not fit: training would fail the same way, so say it before "Start?".
            raise out_of_memory_error("timing one training step (the run's batch does not fit)") from None
        else:
            from finetuner import models

            trained = models.parameter_count(pre.recipe.trained, pre.recipe.derived_layers)
            rates = time_plan.measured_rates(measured, trained, _on_policy_note(cfg))
            return time_plan.estimate(cfg, pre, rates)
    return time_plan.estimate(cfg, pre, time_plan.calibrated(why))


def _decode_rows() -> int:
    from finetuner.benchmark.measure import ANSWER_BATCH

    return ANSWER_BATCH  # the benchmark decodes this many rows at once


def _on_policy_note(cfg: RunConfig) -> str:
    if cfg.is_distillation and cfg.on_policy_fraction:
        return "; the student's on-policy sampling is not included"
    return ""


def derived_facts(cfg: RunConfig, pre: Preflight, time: TimeEstimate) -> list[tuple[str, str]]:
    """(label, value) rows for the plan: what the settings add up to."""
    from finetuner import disk

    if pre.data is None:
        return [("device", device_name(cfg)),
                ("rows", f"questions the teacher writes from {cfg.dataset} ({cfg.questions_per_chunk} per chunk)"),
                *time_rows(time),
                ("disk needed", f"about {ui.size(disk.bytes_needed(pre.recipe))}")]

    stats = pre.data.stats
    total = pre.recipe.steps(stats["train_rows"])
    processes = pre.recipe.processes
    effective = cfg.batch_size * cfg.gradient_accumulation * processes
    rows = [
        ("device", device_name(cfg)),
        ("rows", f"{stats['train_rows']} to train on, {stats['eval_rows']} held out"
                 f" ({pre.data.format.description()})"),
        ("optimizer steps", f"{total}" + ("" if cfg.max_steps else f" ({cfg.epochs} epoch{'s' * (cfg.epochs > 1)})")),
        ("effective batch", f"{effective} rows ({cfg.batch_size} x {cfg.gradient_accumulation} accumulation"
                            + (f" x {processes} processes)" if processes > 1 else ")")),
        *time_rows(time),
        ("disk needed", f"about {ui.size(disk.bytes_needed(pre.recipe))}"),
    ]
    return rows


def time_rows(time: TimeEstimate) -> list[tuple[str, str]]:
    """One row a phase, then the total of those estimated."""
    from finetuner.summary import duration

    rows = []
    for phase in time.phases:
        label = "estimated training time" if phase.name == "training" else f"time: {phase.name}"
        rows.append((label, f"about {duration(phase.seconds)} ({phase.how})" if phase.seconds is not None
                     else phase.how))
    if time.total is not None and len(time.phases) > 1:
        unknown = [p.name for p in time.phases if p.seconds is None]
        rows.append(("estimated total", f"about {duration(time.total)} after \"Start?\""
                                        + (f", plus {', '.join(unknown)}" if unknown else "")))
    return rows


def plan_warnings(cfg: RunConfig, pre: Preflight, time: TimeEstimate | None = None) -> list[str]:
    from finetuner.config import applies

    notes = list(time.notes) if time else []
    if pre.data is None:
        return notes
    held = pre.data.stats["eval_rows"]
    from finetuner.teachers.topk_quality import kept_mass_warning

    if note := kept_mass_warning(cfg):
        notes.append(note)
    notes += _fsdp_note()
    if cfg.benchmark and applies("benchmark", cfg):
        if pre.data.format.kind == "text":
            notes.append("the benchmark will be skipped: plain text has no prompts and answers to score")
        elif cfg.benchmark_samples > held:
            notes.append(f"benchmark_samples is {cfg.benchmark_samples} but only {held} rows are held out; "
                         f"the benchmark will use {held} (raise eval_fraction or max_samples for more)")
        notes += _size_note(cfg, pre)
    return notes


def _fsdp_note() -> list[str]:
    """accelerate turns FSDP on for GPUs only: on a CPU, fsdp.yaml trains plain DDP without a word."""
    import os

    import torch

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true") or torch.cuda.is_available():
        return []
    return ["launched with fsdp.yaml on a machine without CUDA: accelerate trains plain DDP here (every "
            "process holds whole models), not FSDP"]


def _size_note(cfg: RunConfig, pre: Preflight) -> list[str]:
    """The verdict's size check, said before "Start?" when this student cannot pass it."""
    from finetuner import models
    from finetuner.benchmark.checks import SMALLER_TARGET

    if not pre.recipe.distils or cfg.teacher_api_base:
        return []
    student = models.parameter_count(pre.recipe.trained, pre.recipe.derived_layers)
    teacher = models.parameter_count(pre.recipe.teacher)
    smaller = 1 - student / teacher
    if smaller >= SMALLER_TARGET:
        return []
    return [f"the student has {smaller:.1%} fewer parameters than the teacher ({student / 1e6:.1f}M of "
            f"{teacher / 1e6:.1f}M); the verdict's size check wants at least {SMALLER_TARGET:.0%} fewer, so it "
            "will not pass (keep fewer layers for it to)"]


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
