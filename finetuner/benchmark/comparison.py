"""The report: every model's result compared, as OUT/benchmark.json.

benchmark.json (written by `save`):
{
  "approach": "fine-tuning" | "distillation",
  "samples": int, "max_new_tokens": int, "metrics": ["rouge1", "rouge2", "rougeL"],
  "models": [{"label", "rouge": {metric: F1},
              "perplexity",                    # of the reference answers (teacher forcing)
              "loop_rate",                     # share of answers repeating a word 4-gram 3+ times
              "fidelity_rougeL", "top1_agreement",  # vs the teacher (distillation); null for the teacher
              "parameters", "size_on_disk_mb", "tokens_per_s", "peak_memory_mb",  # null when unknown
                                               # tokens_per_s: one batch, SPEED_TOKENS new tokens a row
                                               # speed_repeats: tokens/s of each alternate timing (speed.py)
              "source": "weights" | "answers file",  # the teacher answered from teacher_heldout.jsonl
              "accuracy": {"strict"|"flexible": {"accuracy", "stderr", "correct", "n"}} | null,  # task.py
              "judge": {"mean", "low", "high", "scored", "unscored"} | null,  # judge.py, 95% interval
              "samples": [{"prompt", "reference", "generation", "rougeL", "loops",
                           "final_answer": {"reference", "strict", "flexible", "strict_correct",
                                            "flexible_correct"},   # with the task metric
                           "judge": {"score": 1-5 | null, "reason"}}, ...]},  # with a judge
             ...],                             # in run order; the last is the model this run made
  "task_metric": {"setting", "used", "checkable_share", "why", "extraction"},
  "judge": {"model", "api_base", "rubric", "rubric_version", "status": "ok" | the fault's line,
            "unscored", "missing", "tokens", "file"} | absent,   # judge.py
  "speculative": {... see speculative.py} | {"why": reason it did not run} | absent,
  "baseline": label | null,                    # base model / student before distillation
  "final": label,                              # the model this run produced
  "teacher": label | null,                     # distillation only
  "sft_baseline": label | null,                # the same student fine-tuned plainly (sft_baseline)
  "deltas": {metric: final - baseline} | null,
  "retained": {metric: final / teacher} | null, # distillation only; null per metric if teacher scored 0
  "verdict": {"checks": [...], "passed", "total", "summary": one line} | null   # see verdict.py
}
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetuner.benchmark.measure import ModelResult
from finetuner.benchmark.scores import METRICS
from finetuner.benchmark.verdict import verdict

REPORT_FILE = "benchmark.json"
SFT_BASELINE = "SFT baseline"  # the label of the plainly fine-tuned student (sft_baseline)


def compare(results: list[ModelResult], approach: str, extra: dict | None = None) -> dict[str, Any]:
    """The report. Results come in run order: the last one is always the model this run made.
    extra: report entries the verdict reads too (task_metric, judge, speculative).

    fine-tuning:  [base, fine-tuned]                 (or just [fine-tuned])
    distillation: [teacher, student before, (SFT baseline,) student after]  (or [teacher, student after])
    """
    if not results:
        raise ValueError("compare needs at least one result")
    final = results[-1]
    teacher = results[0] if approach == "distillation" and len(results) > 1 else None
    baseline = _baseline(results, approach)
    sft = next((r for r in results[:-1] if r.label == SFT_BASELINE), None)
    report: dict[str, Any] = {
        "approach": approach,
        "metrics": list(METRICS),
        "models": [asdict(r) for r in results],
        "baseline": baseline.label if baseline else None,
        "final": final.label,
        "teacher": teacher.label if teacher else None,
        "sft_baseline": sft.label if sft else None,
        "deltas": ({m: round(final.rouge[m] - baseline.rouge[m], 4) for m in METRICS}
                   if baseline else None),
        "retained": ({m: _ratio(final.rouge[m], teacher.rouge[m]) for m in METRICS}
                     if teacher else None),
        **(extra or {}),
    }
    report["verdict"] = verdict(report)
    return report


def _baseline(results: list[ModelResult], approach: str) -> ModelResult | None:
    if approach == "distillation":
        return results[1] if len(results) >= 3 and results[1].label != SFT_BASELINE else None
    return results[0] if len(results) >= 2 else None


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 4) if reference > 0 else None


def save(report: dict, out_dir: str | Path) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load(out_dir: str | Path) -> dict | None:
    """The saved report, or None when the run was not benchmarked."""
    path = Path(out_dir) / REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

