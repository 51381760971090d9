#!/usr/bin/env python
"""How fast finetuner distils, against plain fine-tuning, the naive 2.1.0 recipe and TRL's GKDTrainer.

    pip install -r requirements-bench.txt
    python benchmarks/distill_speed.py --quick   # under 3 minutes on 2 cores
    python benchmarks/distill_speed.py           # the full run, ~12 minutes on 2 idle cores
    python benchmarks/distill_speed.py --quick --objectives   # each objective's s/step vs forward KL
    python benchmarks/distill_speed.py --contenders finetuner_bf16,finetuner_fp32 --startup-runs 0
                                                 # this CPU's bf16 against fp32 (finetuner picks the faster)

Every contender trains the same 15-layer student derived from the built-in SmolLM2-135M-Instruct
(the teacher, for the distillation contenders) on the same GSM8K rows, prepared by
finetuner.data.preparing.prepare, with the same batch size, sampler order and thread count. Each runs in a
fresh subprocess (this script with --contender NAME), so peak RSS is its own. A step's time is the
gap between consecutive `on_step_end` callbacks (data, forward, backward, optimizer, logging).
Warm-up steps are dropped; every contender runs `--repeats` times in alternating order and medians
over the pooled steps are reported. Counted tokens are label tokens (not -100), what the loss
averages over, never padding.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTENDERS = {
    "plain": "plain fine-tune (no teacher, bf16 autocast)",
    "finetuner": "finetuner DistillationTrainer",
    "naive": "2.1.0 naive (fp32, pad to max, full KL)",
    "trl": "TRL GKDTrainer (lmbda 0, beta 0, bf16)",
    # Not run by default: finetuner with its CPU precision forced (FINETUNER_CPU_DTYPE), to time
    # the choice models.precision_policy makes by measurement.
    "finetuner_bf16": "finetuner, forced bf16 (teacher bf16, student bf16 autocast)",
    "finetuner_fp32": "finetuner, forced fp32 (teacher and student fp32)",
}
FORCED_DTYPE = {"finetuner_bf16": "bf16", "finetuner_fp32": "fp32"}
# --objectives: finetuner's objectives (DISTILLATION_UPDATE.md) in ONE trainer, switched every step in
# turn, so each sees the same machine (a 2-core machine shared with other jobs drifts by minutes).
OBJECTIVES = {
    "forward_kl": {},
    "reverse_kl": {"divergence": "reverse_kl"},
    "jsd": {"divergence": "jsd", "beta": 0.5},
    "on_policy": {"on_policy": True},  # every step samples: the cost of one on-policy step
    "hidden": {"hidden": True},  # mse, auto layer map, weight 0.1
}
ON_POLICY_NEW_TOKENS = 64
TARGETS = {  # finetuner's ratio to another contender: (other, measure, target, "min" or "max")
    "tokens/s vs naive": ("naive", "tokens_per_s", 2.5, "min"),
    "tokens/s vs TRL": ("trl", "tokens_per_s", 1.3, "min"),
    "s/step vs plain": ("plain", "s_per_step", 1.5, "max"),
    "peak RSS vs plain": ("plain", "peak_rss_gb", 1.3, "max"),
}
STARTUP_TARGET_S = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: batch 4, length 128, 2 measured steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--samples", type=int, help="GSM8K rows to train on")
    p.add_argument("--steps", type=int, help="measured optimizer steps per contender")
    p.add_argument("--warmup", type=int, help="steps run first and not measured (at least 1)")
    p.add_argument("--repeats", type=int, help="runs of every contender, in alternating order; steps are pooled")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--contenders", default="plain,finetuner,naive,trl", help="comma-separated: " + ",".join(CONTENDERS))
    p.add_argument("--startup-runs", type=int, help="wizard start-up measurements (0 to skip)")
    p.add_argument("--output", type=Path, help="results JSON (default benchmarks/results/distill_speed-DATE.json)")
    p.add_argument("--objectives", action="store_true",
                   help="time finetuner's objectives (divergences, on-policy, hidden states) against forward KL "
                        "in one interleaved run instead of the contenders")
    p.add_argument("--contender", help=argparse.SUPPRESS)  # internal: run one contender, write JSON to --result
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = dict(batch_size=4, max_length=128, samples=8, steps=2, warmup=1, repeats=1, startup_runs=3)
    full = dict(batch_size=8, max_length=256, samples=64, steps=8, warmup=2, repeats=2, startup_runs=5)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.warmup = max(1, args.warmup)  # the first step's end is the start of the first measured step
    return args


# ---- one contender, in its own process -------------------------------------------------------

def run_contender(name: str, args: argparse.Namespace) -> dict:
    import torch

    from finetuner.config import RunConfig

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix=f"distill-speed-{name}-") as out:
        cfg = RunConfig(approach="distillation", output_dir=out, max_samples=args.samples, max_length=args.max_length,
                        batch_size=args.batch_size, gradient_accumulation=1, max_steps=args.warmup + args.steps,
                        eval_fraction=0.0, benchmark=False)
        if name == "objectives":
            return measure_objectives(cfg, args)
        trainer = build_trainer(name, cfg)
        return measure(trainer, args)


def build_trainer(name: str, cfg):
    """The contender's Trainer, built as finetuner builds its own wherever finetuner has one."""
    from transformers import Trainer

    from pathlib import Path

    from finetuner import models, training
    from finetuner.data.preparing import make_collator
    from finetuner.recipe import Recipe
    from finetuner.training import arguments, student as students

    recipe = Recipe.of(cfg)
    if name in ("finetuner", *FORCED_DTYPE):
        trainer, *_ = training.build(cfg, recipe)  # exactly what finetuner trains with, not run
        return trainer
    tokenizer = models.load_tokenizer(cfg.student)
    data = training.prepare_data(cfg, tokenizer)
    student = students.build(recipe, data.train, make_collator(tokenizer), Path(cfg.output_dir))
    args = arguments.training_arguments(cfg, Path(cfg.output_dir))
    if name == "plain":
        return Trainer(model=student, args=args, train_dataset=data.train,
                       data_collator=make_collator(tokenizer), processing_class=tokenizer)
    if name == "naive":
        return naive_trainer(args, cfg, student, tokenizer, data)
    if name == "trl":
        return trl_trainer(cfg, student, tokenizer, data)
    raise SystemExit(f"unknown contender {name}")


def measure(trainer, args: argparse.Namespace) -> dict:
    """Train warmup + steps steps; time each step and count its label tokens."""
    import torch
    from transformers import PrinterCallback, TrainerCallback

    from finetuner import models

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends = []  # (wall s, whole machine's busy CPU s, this process's CPU s) at each step's end

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(_cpu_clock())
            control.should_save = False  # checkpoints are not what is measured

    clock, counted = StepClock(), []
    collate = trainer.data_collator

    def counting_collate(rows):
        batch = collate(rows)
        counted.append(int((batch["labels"] != -100).sum()))
        return batch

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(clock)
    trainer.data_collator = counting_collate
    rss_before = _rss_now()
    trainer.train()

    spans = list(zip(clock.ends[args.warmup - 1:], clock.ends[args.warmup:]))
    seconds = [b[0] - a[0] for a, b in spans]
    tokens = counted[args.warmup:args.warmup + len(seconds)]  # batches are collated in step order
    # CPU time other processes took during each step, as a share of the machine: other jobs on 2 cores
    # slow a 2-thread torch step far more than their share (threads wait for each other at every op).
    others = [max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / ((b[0] - a[0]) * os.cpu_count()) for a, b in spans]
    teacher = getattr(trainer, "teacher", None) or getattr(trainer, "teacher_model", None)
    teacher = getattr(teacher, "model", teacher)  # finetuner's LiveTeacher holds the model
    return {
        "step_seconds": [round(s, 3) for s in seconds], "step_tokens": tokens,
        "step_others_cpu_share": [round(o, 3) for o in others],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_train_gb": rss_before,
        "losses": [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h],
        "student_params": models.count_parameters(trainer.model),
        "teacher_params": models.count_parameters(teacher) if teacher is not None else 0,
        "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch.") if teacher is not None else None,
        "bf16_autocast": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "threads": torch.get_num_threads(),
    }


def measure_objectives(cfg, args: argparse.Namespace) -> dict:
    """finetuner's DistillationTrainer with each objective in turn, one per step (round robin after
    the warm-up): wall and process-CPU seconds per step, and the on-policy sampling on its own."""
    import dataclasses

    from transformers import PrinterCallback, TrainerCallback

    rounds = args.steps * len(OBJECTIVES)
    cfg = dataclasses.replace(cfg, max_steps=args.warmup + rounds, hidden_state_weight=0.1,
                              on_policy_fraction=1.0, on_policy_max_new_tokens=ON_POLICY_NEW_TOKENS)
    trainer = build_trainer("finetuner", cfg)
    on_policy, hidden = trainer.on_policy, trainer.hidden  # built by finetuner for cfg's settings
    schedule = ["forward_kl"] * args.warmup + [name for _ in range(args.steps) for name in OBJECTIVES]

    class Switch(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_begin(self, args_, state, control, **kwargs):
            settings = OBJECTIVES[schedule[min(state.global_step, len(schedule) - 1)]]
            trainer.teacher.divergence = settings.get("divergence", "forward_kl")
            trainer.teacher.beta = settings.get("beta", 0.5)
            trainer.on_policy = on_policy if settings.get("on_policy") else None
            trainer.hidden = hidden if settings.get("hidden") else None

        def on_step_end(self, args_, state, control, **kwargs):
            self.ends.append(_cpu_clock())
            control.should_save = False

    clock = Switch()
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(clock)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    per = {name: {"wall": [], "cpu": [], "sampling": [], "others": []} for name in OBJECTIVES}
    for step, (a, b) in enumerate(zip(clock.ends, clock.ends[1:]), start=1):
        if step < args.warmup:
            continue
        name = schedule[step]
        per[name]["wall"].append(b[0] - a[0])
        per[name]["cpu"].append(b[2] - a[2])
        per[name]["sampling"].append(logs[step].get("gen_s", 0.0) if step < len(logs) else 0.0)
        per[name]["others"].append(max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / ((b[0] - a[0]) * os.cpu_count()))
    return {name: {"s_per_step": statistics.median(v["wall"]), "cpu_s_per_step": statistics.median(v["cpu"]),
                   "sampling_s_per_step": statistics.median(v["sampling"]),
                   "others_cpu_share": statistics.median(v["others"]), "steps": len(v["wall"]),
                   "step_seconds": [round(x, 2) for x in v["wall"]]}
            for name, v in per.items()}


def report_objectives(result: dict) -> None:
    base = result["forward_kl"]
    print(f"{'objective':<12} {'s/step':>7} {'vs fwd':>7} {'CPU s/step':>10} {'vs fwd':>7} {'sampling s':>10} "
          f"{'others CPU':>10}  steps")
    for name, r in result.items():
        print(f"{name:<12} {r['s_per_step']:7.2f} {r['s_per_step'] / base['s_per_step']:6.2f}x "
              f"{r['cpu_s_per_step']:10.2f} {r['cpu_s_per_step'] / base['cpu_s_per_step']:6.2f}x "
              f"{r['sampling_s_per_step']:10.2f} {100 * r['others_cpu_share']:9.0f}%  {r['steps']}")
    print(f"on_policy: every step samples up to {ON_POLICY_NEW_TOKENS} new tokens per row; a fraction f costs "
          "about f times its extra. hidden: mse, auto layer map, weight 0.1")


def summarize(runs: list[dict], busy: float = 0.10) -> dict:
    """One contender's runs (one per repeat) pooled: medians over the measured steps, the highest peak RSS.

    Steps during which other processes used more than `busy` of the machine are left out (their count
    is reported): on 2 cores a job that takes one core can make a 2-thread step 5-20x slower."""
    steps = [step for r in runs
             for step in zip(r["step_seconds"], r["step_tokens"], r["step_others_cpu_share"])]
    clean = [step for step in steps if step[2] <= busy]
    kept = clean if len(clean) >= max(3, len(steps) // 2) else steps  # a mostly busy machine: keep all, say so
    seconds, tokens, others = zip(*kept)
    return {**{k: v for k, v in runs[0].items() if not k.startswith("step_")},
            "s_per_step": statistics.median(seconds),
            "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds)),
            "tokens_per_s_overall": sum(tokens) / sum(seconds),
            "steps_used": f"{len(kept)}/{len(steps)}",
            "s_per_step_by_repeat": [round(statistics.median(r["step_seconds"]), 2) for r in runs],
            "others_cpu_share": statistics.median(others),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "runs": runs}


def naive_trainer(training_args, cfg, student, tokenizer, data):
    """The 2.1.0 recipe as first written: fp32 teacher and student, every row padded to max_length,
    full [B, L, V] logits for both, KLDivLoss(batchmean) over all positions plus the model's CE."""
    import dataclasses

    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import DataCollatorForSeq2Seq, Trainer

    from finetuner import models

    class NaiveKDTrainer(Trainer):
        def __init__(self, *a, teacher, temperature, alpha, **kw):
            super().__init__(*a, **kw)
            self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
            self.kl = nn.KLDivLoss(reduction="batchmean")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=inputs["input_ids"],
                                              attention_mask=inputs["attention_mask"]).logits
            t = self.temperature
            kl = self.kl(F.log_softmax(outputs.logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1))
            loss = self.alpha * outputs.loss + (1 - self.alpha) * t ** 2 * kl
            return (loss, outputs) if return_outputs else loss

    teacher = models.load_model(cfg.teacher, dtype=torch.float32, for_training=False)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=cfg.max_length,
                                      label_pad_token_id=-100)
    args = dataclasses.replace(training_args, bf16=False)
    return NaiveKDTrainer(model=student, args=args, train_dataset=data.train, data_collator=collator,
                          processing_class=tokenizer, teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha)


def trl_trainer(cfg, student, tokenizer, data):
    """TRL's GKDTrainer as offline forward-KL distillation (lmbda 0: never generate; beta 0: KL(teacher||student)),
    with TRL's own collator and defaults (activation checkpointing on); the same bf16 teacher as finetuner."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from finetuner import models

    # TRL's DataCollatorForChatML takes the prompt/response boundary from completion_mask; it reads
    # a "prompt" field first, which is unused once input_ids and completion_mask are there.
    train = data.train.map(lambda row: {"prompt": "", "completion_mask": [int(x != -100) for x in row["labels"]]})
    args = GKDConfig(output_dir=str(Path(cfg.output_dir) / "trl"), per_device_train_batch_size=cfg.batch_size,
                     max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, lmbda=0.0, beta=0.0,
                     max_length=cfg.max_length, bf16=True, use_cpu=True, seed=cfg.seed, data_seed=cfg.seed,
                     logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
                     train_sampling_strategy="group_by_length")  # the same batches as the other contenders
    teacher = models.load_teacher(cfg.teacher, models.precision_policy())
    return GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train, processing_class=tokenizer)


def _cpu_clock() -> tuple[float, float, float]:
    """Wall seconds, busy CPU seconds of the whole machine (/proc/stat), CPU seconds of this process."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _rss_now() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


# ---- the machine --------------------------------------------------------------------------------

def run_machine(args: argparse.Namespace) -> dict:
    """Matmul peaks, and the built-in's one-time conversion (kept out of the contenders' RSS)."""
    import torch

    from finetuner import models
    from finetuner.config import BUILTIN_MODEL

    torch.set_num_threads(args.threads)
    models.resolve_model_path(BUILTIN_MODEL)
    peaks = {}
    for dtype in (torch.bfloat16, torch.float32):
        best = 0.0
        for n in (1024, 2048):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            a @ b  # warm-up
            reps = 20 if n == 1024 else 4
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(reps):
                    a @ b
                best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9)
        peaks[str(dtype).removeprefix("torch.")] = best
    return {"matmul_gflops": peaks, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": _cpu_name(), "cores": os.cpu_count()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure_startup(runs: int) -> list[float]:
    """Seconds from launching the wizard in a pty to its first prompt ("Step 0")."""
    import pexpect

    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "HF_HUB_OFFLINE": "1"}
    times = []
    with tempfile.TemporaryDirectory() as cwd:  # no answers file of a previous run in the way
        for _ in range(runs):
            start = time.perf_counter()
            child = pexpect.spawn(sys.executable, [str(ROOT / "finetune_cli.py")], cwd=cwd, env=env,
                                  encoding="utf-8", timeout=30, dimensions=(60, 200))
            child.expect("Step 0")
            times.append(time.perf_counter() - start)
            child.terminate(force=True)
    return times


# ---- the parent: run everything, report ----------------------------------------------------------

def run_child(what: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, "--contender", what, "--result", result.name,
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                   "--samples", str(args.samples), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads)]
        env = {**os.environ}
        if what in FORCED_DTYPE:
            from finetuner.models import CPU_DTYPE_ENV

            env[CPU_DTYPE_ENV] = FORCED_DTYPE[what]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
            raise SystemExit(f"{what} failed (exit {proc.returncode})")
        data = json.loads(Path(result.name).read_text())
        data["process_seconds"] = round(time.perf_counter() - started, 1)
        return data


def flops_share(result: dict, peak_gflops: float) -> float:
    """Achieved share of the bf16 matmul peak: (6 x student + 2 x teacher params) per counted token."""
    flops_per_token = 6 * result["student_params"] + 2 * result["teacher_params"]
    return flops_per_token * result["tokens_per_s"] / (peak_gflops * 1e9)


def report(results: dict, machine: dict, startup: list[float]) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=150)
    peak = machine["matmul_gflops"]["bfloat16"]
    table = Table(title="Distillation speed", title_justify="left")
    columns = ("contender", "s/step", "per repeat", "counted tok/s", "peak RSS", "% bf16 peak", "vs plain tok/s",
               "steps used", "others' CPU")
    for column in columns:
        table.add_column(column, justify="left" if column == "contender" else "right")
    plain = results.get("plain")
    for name, r in results.items():
        r["flops_share"] = flops_share(r, peak)
        by_repeat = " / ".join(f"{x:.2f}" for x in r["s_per_step_by_repeat"])
        table.add_row(r["description"], f"{r['s_per_step']:.2f}", by_repeat, f"{r['tokens_per_s']:.0f}",
                      f"{r['peak_rss_gb']:.2f} GB", f"{100 * r['flops_share']:.1f}%",
                      f"{r['tokens_per_s'] / plain['tokens_per_s']:.2f}x" if plain else "-",
                      r["steps_used"], f"{100 * r['others_cpu_share']:.0f}%")
    console.print(table)
    ratios = {}
    for label, (other, key, target, kind) in TARGETS.items():
        if "finetuner" in results and other in results:
            value = results["finetuner"][key] / results[other][key]
            met = value >= target if kind == "min" else value <= target
            ratios[label] = {"value": value, "target": target, "kind": kind, "met": met}
            console.print(f"finetuner {label}: {value:.2f}x (target {'≥' if kind == 'min' else '≤'}{target}x) "
                          f"{'[green]met[/]' if met else '[red]missed[/]'}")
    if all(name in results for name in FORCED_DTYPE):
        from finetuner import models

        value = results["finetuner_fp32"]["tokens_per_s"] / results["finetuner_bf16"]["tokens_per_s"]
        ratios["fp32 tokens/s vs bf16"] = {"value": value, "target": None, "kind": "info", "met": None,
                                           "chosen": "bf16" if models.cpu_uses_bf16() else "fp32"}
        console.print(f"finetuner in fp32: {value:.2f}x the tokens/s of bf16 on this CPU; left to itself, "
                      f"finetuner runs {models.cpu_precision_reason()}")
    if startup:
        median = statistics.median(startup)
        ratios["wizard start-up s"] = {"value": median, "target": STARTUP_TARGET_S, "kind": "max",
                                       "met": median <= STARTUP_TARGET_S}
        console.print(f"wizard start-up to 'Step 0': {median:.2f} s median of {len(startup)} "
                      f"(target ≤{STARTUP_TARGET_S} s)")
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f}. others' CPU: the machine's share other "
                  "processes used in the steps kept (median); steps where it exceeded 10% are left out (steps used)")
    console.print(f"matmul peak: bf16 {peak:.0f} GFLOP/s, fp32 {machine['matmul_gflops']['float32']:.0f} GFLOP/s; "
                  f"{machine['threads']} threads on {machine['cores']} cores ({machine['cpu']})")
    if "trl" in results:
        console.print(f"TRL activation checkpointing (its default): {results['trl']['gradient_checkpointing']}")
    return ratios


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.contender:
        result = run_machine(args) if args.contender == "machine" else run_contender(args.contender, args)
        args.result.write_text(json.dumps(result))
        return
    if args.objectives:
        started = time.perf_counter()
        result = run_child("objectives", args)
        result.pop("process_seconds", None)
        report_objectives(result)
        record = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "settings": {k: getattr(args, k) for k in ("quick", "batch_size", "max_length", "samples", "steps",
                                                             "warmup", "threads")},
                  "load_average_end": os.getloadavg(), "objectives": result,
                  "total_seconds": round(time.perf_counter() - started, 1)}
        output = args.output or ROOT / "benchmarks" / "results" / (
            f"distill_objectives-{datetime.date.today()}{'-quick' if args.quick else ''}.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(record, indent=1) + "\n")
        print(f"total {record['total_seconds']:.0f} s; results in {output}")
        return
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contenders: {', '.join(sorted(unknown))} (choose from {', '.join(CONTENDERS)})")
    started = time.perf_counter()
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f}", flush=True)
    startup = measure_startup(args.startup_runs) if args.startup_runs else []
    machine = run_child("machine", args)
    runs = {name: [] for name in names}
    for repeat in range(args.repeats):
        # Every other repeat in reverse order, so a machine that drifts slower or faster (a VM's
        # neighbours) weighs on every contender alike.
        for name in names if repeat % 2 == 0 else names[::-1]:
            print(f"running {name} (repeat {repeat + 1} of {args.repeats}) ...", flush=True)
            runs[name].append(run_child(name, args))
    results = {name: {"contender": name, "description": CONTENDERS[name], **summarize(runs[name])} for name in names}
    # The matmul peak again at the end: a few seconds, easily halved by another job; the best of both counts.
    again = run_child("machine", args)["matmul_gflops"]
    machine["matmul_gflops"] = {k: max(v, again[k]) for k, v in machine["matmul_gflops"].items()}
    ratios = report(results, machine, startup)
    if args.quick:
        print("quick mode is a smoke test (a few short, truncated steps): quote the full run's ratios, not these")
    settings = {k: getattr(args, k) for k in ("quick", "batch_size", "max_length", "samples", "steps", "warmup",
                                              "repeats", "threads")}
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "settings": settings,
              "machine": machine, "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "wizard_startup_s": startup, "results": results, "ratios": ratios,
              "total_seconds": round(time.perf_counter() - started, 1)}
    output = args.output or ROOT / "benchmarks" / "results" / (
        f"distill_speed-{datetime.date.today()}{'-quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n")
    shown = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
    print(f"total {record['total_seconds']:.0f} s; results in {shown}")


if __name__ == "__main__":
    main()
