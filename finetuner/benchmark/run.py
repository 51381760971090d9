"""The benchmark stage: every model of a run answers the held-out prompts, then the comparison is
shown and written to OUT/benchmark.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetuner import artifacts, ui
from finetuner.benchmark.comparison import compare, save
from finetuner.benchmark.measure import evaluate, evaluate_answers
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
    results, teacher = [], None
    for label, model, tokenizer, model_dir in models:
        is_teacher = cfg.is_distillation and not results
        if isinstance(model, list):
            ui.step(f"Scoring {label}'s answers to {len(heldout)} held-out prompts")
            result, fidelity = evaluate_answers(label, model, heldout)
        else:
            ui.step(f"Benchmarking {label} on {len(heldout)} held-out prompts")
            result, fidelity = evaluate(label, model, tokenizer, heldout, cfg.max_new_tokens, model_dir,
                                      max_length=cfg.max_length, teacher=None if is_teacher else teacher)
        teacher = fidelity if is_teacher else teacher
        results.append(result)
    report = {"approach": cfg.approach, "samples": len(heldout), "max_new_tokens": cfg.max_new_tokens,
              **compare(results, cfg.approach)}
    show(report, show_samples)
    save(report, out_dir)
    return report
