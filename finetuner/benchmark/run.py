"""The benchmark stage: every model of a run answers the held-out prompts, then the comparison is
shown and written to OUT/benchmark.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetuner import artifacts, ui
from finetuner.benchmark import cost, speculative, speed, task
from finetuner.benchmark.comparison import compare, save
from finetuner.benchmark.judge import judge
from finetuner.benchmark.measure import ModelResult, evaluate, evaluate_answers
from finetuner.benchmark.progress import BenchmarkProgress
from finetuner.benchmark.tables import show


def read_heldout(out_dir: str | Path, limit: int) -> list[dict]:
    rows = artifacts.read_heldout(Path(out_dir))[:limit]
    if not rows:
        raise ui.UserError(f"no held-out prompts to benchmark in {Path(out_dir) / artifacts.HELDOUT_FILE}",
                           hint="raise eval_fraction so some rows are kept out of training, "
                                "or set benchmark=false")
    return rows


def teacher_answers(out_dir: str | Path, heldout: list[dict]) -> list[str] | None:
    """The teacher's answers to these held-out rows from OUT/teacher_heldout.jsonl ({"prompt",
    "response"} per line, written when the teacher is an API), or None when there is no such file."""
    from finetuner.teachers.generate import TEACHER_HELDOUT_FILE

    path = Path(out_dir) / TEACHER_HELDOUT_FILE
    if not path.is_file():
        return None
    by_prompt = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_prompt[row["prompt"]] = row["response"]
    missing = [row["prompt"] for row in heldout if row["prompt"] not in by_prompt]
    if missing:
        raise ui.UserError(f"{path} has no teacher answer for {len(missing)} of the {len(heldout)} held-out "
                           f"prompts benchmarked", hint="regenerate it, or delete it to load the teacher's weights")
    return [by_prompt[row["prompt"]] for row in heldout]


def run_benchmark(cfg, out_dir: str | Path, models: list[tuple[str, Any, Any, str | Path | None]],
                  show_samples: int = 0) -> dict:
    """Evaluate (label, model, tokenizer, model_dir) in run order (see `compare`), show the
    table, write OUT/benchmark.json and return the report. A teacher entry whose model is a list
    of strings holds its answers (teacher_heldout.jsonl) instead of weights."""
    heldout = read_heldout(out_dir, cfg.benchmark_samples)
    metric = task.chosen(cfg.task_metric, [row["reference"] for row in heldout])
    with BenchmarkProgress() as progress:
        results = _answer(cfg, heldout, models, metric["used"], progress)
        _time(cfg, heldout, models, results, progress)
        extra = {"task_metric": metric}
        if cfg.is_distillation and cfg.speculative_benchmark != "false":
            extra["speculative"] = _draft(cfg, heldout, models, progress)
        if cfg.judge_api_base:
            advance = progress.stage(f"The judge ({cfg.judge_model}) grades every answer",
                                     sum(len(r.samples) for r in results))
            extra["judge"] = judge(cfg, out_dir, results, heldout, advance)
    report = {"approach": cfg.approach, "samples": len(heldout), "max_new_tokens": cfg.max_new_tokens,
              **compare(results, cfg.approach, extra)}
    show(report, show_samples)
    save(report, out_dir)
    return report


def _answer(cfg, heldout: list[dict], models: list[tuple], exact_match: bool, progress) -> list[ModelResult]:
    results, teacher = [], None
    for label, model, tokenizer, model_dir in models:
        is_teacher = cfg.is_distillation and not results
        if isinstance(model, list):
            progress.stage(f"Scoring {label}'s answers to {len(heldout)} held-out prompts", len(heldout))
            result, fidelity = evaluate_answers(label, model, heldout, exact_match=exact_match)
        else:
            advance = progress.stage(f"{label} answers {len(heldout)} held-out prompts", len(heldout))
            result, fidelity = evaluate(label, model, tokenizer, heldout, cfg.max_new_tokens, model_dir,
                                        max_length=cfg.max_length, teacher=None if is_teacher else teacher,
                                        exact_match=exact_match, timed=False, on_batch=advance)
        teacher = fidelity if is_teacher else teacher
        results.append(result)
    return results


def _time(cfg, heldout: list[dict], models: list[tuple], results: list[ModelResult], progress) -> None:
    """Every model with weights, timed alternately (speed.py)."""
    entries = [(label, model, tokenizer) for label, model, tokenizer, _ in models if not isinstance(model, list)]
    if not entries:
        return
    prompts = [row.get("messages") or row["prompt"] for row in heldout]
    advance = progress.stage(f"Timing {len(entries)} models alternately, best of {speed.REPEATS}",
                             len(entries) * speed.REPEATS)
    timed = speed.time_alternately(entries, prompts, min(cfg.max_new_tokens, cost.SPEED_TOKENS), cost.SPEED_BATCH,
                                   on_timing=advance)
    for result in results:
        if result.label in timed:
            figures = timed[result.label]
            result.tokens_per_s, result.peak_memory_mb = figures["tokens_per_s"], figures["peak_memory_mb"]
            result.speed_repeats = figures["repeats"]


def _draft(cfg, heldout: list[dict], models: list[tuple], progress) -> dict:
    """The final student as the teacher's speculative draft, when they share a tokenizer."""
    (_, teacher, teacher_tokenizer, _), (label, student, tokenizer, _) = models[0], models[-1]
    local = not isinstance(teacher, list)
    why = speculative.when(cfg.speculative_benchmark, local, local and speculative.shares_tokenizer(
        teacher_tokenizer, tokenizer))
    if why is not None:
        return {"why": why}
    prompts = [row.get("messages") or row["prompt"] for row in heldout][:speculative.PROMPTS]
    new_tokens = min(cfg.max_new_tokens, speculative.MAX_NEW_TOKENS)
    advance = progress.stage(f"Timing the teacher alone and with {label} as its draft, alternately",
                             2 * len(prompts) * speculative.REPEATS)
    return speculative.measure(teacher, student, tokenizer, prompts, new_tokens, on_answer=advance)
