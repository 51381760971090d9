"""A finished benchmark scored and judged again from the answers OUT/benchmark.json saved.

`--benchmark-only` takes this path when the saved report answered the same held-out prompts with the
same max_new_tokens, after the model was last written, and only its scoring is out of date: a
judge that failed or stopped at its spend cap, another judge or rubric, or another task_metric.
Answering every prompt again would cost minutes and give the same greedy answers; speed, size,
perplexity and fidelity are kept as measured. Anything else benchmarks from scratch.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from finetuner import artifacts, ui
from finetuner.benchmark import task
from finetuner.benchmark.comparison import REPORT_FILE, compare, load, save
from finetuner.benchmark.judge import judge
from finetuner.benchmark.measure import ModelResult
from finetuner.benchmark.progress import BenchmarkProgress
from finetuner.benchmark.rubric import RUBRIC_VERSION
from finetuner.benchmark.tables import show


def reusable(cfg, out_dir: str | Path, heldout: list[dict]) -> dict | None:
    """The saved report, when only its scoring needs doing again; else None."""
    out_dir = Path(out_dir)
    report = load(out_dir)
    if report is None or "task_metric" not in report or report.get("max_new_tokens") != cfg.max_new_tokens:
        return None
    prompts = [row["prompt"] for row in heldout]
    if any([s["prompt"] for s in m["samples"]] != prompts for m in report["models"]):
        return None
    if _written_after(out_dir, (out_dir / REPORT_FILE).stat().st_mtime):
        return None
    return report if _scoring_changed(cfg, report) else None


def _written_after(out_dir: Path, saved: float) -> bool:
    """Whether a model of the run was written after the report was saved."""
    folders = [out_dir / artifacts.MODEL_DIR, out_dir / artifacts.ADAPTER_DIR, out_dir / artifacts.SFT_BASELINE_DIR]
    return any(p.stat().st_mtime > saved for folder in folders if folder.is_dir()
               for p in folder.rglob("*") if p.is_file())


def _scoring_changed(cfg, report: dict) -> bool:
    if report["task_metric"].get("setting") != cfg.task_metric:
        return True
    block = report.get("judge")
    if not cfg.judge_api_base:
        return block is not None
    if block is None:
        return True
    same_judge = (block.get("model"), block.get("api_base"), block.get("rubric_version")) == (
        cfg.judge_model, cfg.judge_api_base, RUBRIC_VERSION)
    return not same_judge or block.get("status") != "ok" or bool(block.get("missing"))


def rescore(cfg, out_dir: str | Path, report: dict, heldout: list[dict], show_samples: int = 0) -> dict:
    """Score the saved answers again (task metric, judge), recompute the verdict, show and save."""
    ui.step(f"Scoring the answers saved in {Path(out_dir) / REPORT_FILE} again (no model answers anew; "
            f"delete that file to benchmark from scratch)")
    metric = task.chosen(cfg.task_metric, [row["reference"] for row in heldout])
    names = {f.name for f in fields(ModelResult)}
    results = [ModelResult(**{k: v for k, v in saved.items() if k in names}) for saved in report["models"]]
    for result in results:
        result.judge = None
        for sample in result.samples:
            sample.pop("judge", None)
            sample.pop("final_answer", None)
        result.accuracy = None
        if metric["used"]:
            result.accuracy, extracted = task.score([s["generation"] for s in result.samples],
                                                    [s["reference"] for s in result.samples])
            for sample, found in zip(result.samples, extracted):
                sample["final_answer"] = found
    extra = {"task_metric": metric, **({"speculative": report["speculative"]} if "speculative" in report else {})}
    if cfg.judge_api_base:
        with BenchmarkProgress() as progress:
            advance = progress.stage(f"The judge ({cfg.judge_model}) grades every answer",
                                     sum(len(r.samples) for r in results))
            extra["judge"] = judge(cfg, out_dir, results, heldout, advance)
    fresh = {"approach": report["approach"], "samples": report["samples"], "max_new_tokens": report["max_new_tokens"],
             **compare(results, report["approach"], extra)}
    show(fresh, show_samples)
    save(fresh, out_dir)
    return fresh
