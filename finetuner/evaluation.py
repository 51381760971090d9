"""Which models a run's benchmark compares, loaded from its output directory.

Fine-tuning: base vs fine-tuned. Distillation: teacher, student before, (the SFT baseline,)
student after; the teacher answers from OUT/teacher_heldout.jsonl instead when that file exists.
Also used by `--benchmark-only OUTPUT_DIR` on a finished run.
"""

from __future__ import annotations

from pathlib import Path

from finetuner import artifacts, models, ui
from finetuner.benchmark.comparison import SFT_BASELINE
from finetuner.benchmark.run import read_heldout, run_benchmark, teacher_answers
from finetuner.config import RunConfig


def trained_model(out_dir: Path):
    """The model a run produced: the full/merged model, else the adapter on its base."""
    model_dir = out_dir / artifacts.MODEL_DIR
    if (model_dir / "config.json").is_file():
        return models.load_model(str(model_dir)), model_dir
    adapter_dir = out_dir / artifacts.ADAPTER_DIR
    if (adapter_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)), adapter_dir
    raise ui.UserError(f"{out_dir} holds no trained model (no {artifacts.MODEL_DIR}/ or {artifacts.ADAPTER_DIR}/)",
                       hint="train first, or point --benchmark-only at a finished output directory")


def models_to_compare(cfg: RunConfig, out_dir: Path) -> list[tuple]:
    trained, trained_dir = trained_model(out_dir)
    tokenizer = models.load_tokenizer(str(trained_dir))
    if not cfg.is_distillation:
        base = models.load_model(cfg.model)
        return [("base", base, models.load_tokenizer(cfg.model), _on_disk(cfg.model)),
                ("fine-tuned", trained, tokenizer, trained_dir)]
    if cfg.student_layers is None:
        before, before_dir = models.load_model(cfg.student), _on_disk(cfg.student)
    else:
        kept = artifacts.read_student_layers(out_dir)  # the layers training started from
        before, before_dir = models.derive_student(models.load_model(cfg.student), cfg.student_layers, kept), None
    return [teacher_entry(cfg, out_dir),
            ("student before", before, tokenizer, before_dir),
            *sft_baseline_entry(cfg, out_dir),
            ("student after", trained, tokenizer, trained_dir)]


def teacher_entry(cfg: RunConfig, out_dir: Path) -> tuple:
    """The teacher's weights, or its answers when OUT/teacher_heldout.jsonl holds them (an API
    teacher has no weights here: it is scored from its cached held-out answers)."""
    answers = teacher_answers(out_dir, read_heldout(out_dir, cfg.benchmark_samples))
    if answers is not None:
        return ("teacher (API, cached answers)", answers, None, None)
    if cfg.teacher_api_base:
        raise ui.UserError(f"no cached teacher answers in {out_dir} to score the API teacher with",
                           hint="rerun the generation (python finetune_cli.py --answers ... --resume)")
    return ("teacher", models.load_model(cfg.teacher), models.load_tokenizer(cfg.teacher), _on_disk(cfg.teacher))


def sft_baseline_entry(cfg: RunConfig, out_dir: Path) -> list[tuple]:
    """The same student fine-tuned plainly (sft_baseline), when that run finished."""
    baseline_dir = out_dir / artifacts.SFT_BASELINE_DIR
    if not cfg.sft_baseline or not (baseline_dir / artifacts.MODEL_DIR / "config.json").is_file():
        return []
    model, model_dir = trained_model(baseline_dir)
    return [(SFT_BASELINE, model, models.load_tokenizer(str(model_dir)), model_dir)]


def _on_disk(name: str) -> str | None:
    path = models.resolve_model_path(name)
    return path if Path(path).is_dir() else None


def benchmark_output(cfg: RunConfig, out_dir: str | Path, show_samples: int = 0) -> dict:
    """Benchmark the run; when only the scoring of a saved benchmark is out of date (a judge to
    retry, another task_metric), score its saved answers again instead (rescore.py)."""
    from finetuner.benchmark import rescore

    out_dir = Path(out_dir)
    saved = rescore.reusable(cfg, out_dir, read_heldout(out_dir, cfg.benchmark_samples))
    if saved is not None:
        return rescore.rescore(cfg, out_dir, saved, read_heldout(out_dir, cfg.benchmark_samples), show_samples)
    return run_benchmark(cfg, out_dir, models_to_compare(cfg, out_dir), show_samples=show_samples)
