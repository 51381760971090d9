#!/usr/bin/env python
"""The memory plan's estimate against the measured peak (RSS on CPU) of real runs.

    python benchmarks/memory_plan.py            # built-in SmolLM2-135M cases, ~5 minutes on 2 cores
    python benchmarks/memory_plan.py --table    # the README's table for typical pairs (configs only)

Each case runs `finetune_cli.py` for 2 optimizer steps in a fresh process and reads that
process's peak resident memory; the estimate comes from finetuner.memory_plan for the same answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK = ("import resource, sys; sys.argv[0] = 'finetune_cli.py'; import finetune_cli; rc = finetune_cli.main(sys.argv[1:]); "
        "print('PEAK_RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)")


def measured_peak(answers: dict, workdir: Path) -> int:
    """Peak RSS in bytes of one finetuner run with these answers (a fresh process)."""
    path = workdir / "answers.yaml"
    path.write_text(yaml.safe_dump({**answers, "output_dir": str(workdir / "out")}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", PEAK, "--answers", str(path), "--defaults", "--yes", "--overwrite"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stdout[-2000:] + run.stderr[-2000:])
    return int(next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("PEAK_RSS")))


def estimated(answers: dict) -> int:
    from finetuner.config import RunConfig
    from finetuner.memory_plan import estimate, shapes
    from finetuner.recipe import Recipe

    cfg = RunConfig(**{**answers, "output_dir": "unused"})
    student, teacher = shapes(Recipe.of(cfg))
    return estimate(cfg, student, teacher, "cpu").total


BASE = dict(dataset="gsm8k", max_samples=64, epochs=1, max_steps=2, benchmark=False, upload=False, seed=0,
            gradient_accumulation=1, save_steps=1000)
CASES = {
    "distill 30 -> 15 layers, full, batch 8 x 256": dict(approach="distillation", student_layers=15, batch_size=8,
                                                         max_length=256),
    "distill, full, batch 8 x 256, gradient checkpointing": dict(approach="distillation", student_layers=15,
                                                                 batch_size=8, max_length=256,
                                                                 gradient_checkpointing=True),
    "distill, LoRA student, batch 4 x 256": dict(approach="distillation", student_layers=15, batch_size=4,
                                                 max_length=256, student_training="lora"),
    "fine-tune LoRA, batch 8 x 256": dict(approach="fine-tuning", method="lora", batch_size=8, max_length=256),
}


def compare(cases: dict) -> list[dict]:
    results = []
    for name, settings in cases.items():
        answers = {**BASE, **settings}
        with tempfile.TemporaryDirectory() as tmp:
            peak = measured_peak(answers, Path(tmp))
        guess = estimated(answers)
        results.append({"case": name, "estimate_gb": round(guess / 1e9, 2), "measured_gb": round(peak / 1e9, 2),
                        "error": round(guess / peak - 1, 3)})
        print(json.dumps(results[-1]), flush=True)
    return results


def typical_pairs() -> list[dict]:
    """The README's table: memory per GPU for typical teacher -> student pairs at batch 4 x 2048 tokens,
    from known architecture numbers (no Hub access)."""
    from transformers import LlamaConfig

    from finetuner.config import RunConfig
    from finetuner.memory_plan import estimate, shape_of

    def llama(hidden, layers, heads, kv, intermediate, vocab, tied):
        return shape_of(LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                    num_key_value_heads=kv, intermediate_size=intermediate, vocab_size=vocab,
                                    tie_word_embeddings=tied))

    models = {  # architecture numbers as published in each model's config.json
        "SmolLM2-1.7B": llama(2048, 24, 32, 32, 8192, 49152, True),
        "SmolLM2-360M": llama(960, 32, 15, 5, 2560, 49152, True),
        "Llama-3.1-8B": llama(4096, 32, 32, 8, 14336, 128256, False),
        "Llama-3.2-1B": llama(2048, 16, 32, 8, 8192, 128256, True),
        "Llama-3.1-70B": llama(8192, 80, 64, 8, 28672, 128256, False),
    }
    pairs = [("SmolLM2-1.7B", "SmolLM2-360M"), ("Llama-3.1-8B", "Llama-3.2-1B"), ("Llama-3.1-70B", "Llama-3.1-8B")]
    modes = {"full student": ({}, 1),
             "full, checkpointing": ({"gradient_checkpointing": True}, 1),
             "LoRA, checkpointing": ({"student_training": "lora", "gradient_checkpointing": True}, 1),
             "LoRA, checkpointing, 4-bit teacher": ({"student_training": "lora", "gradient_checkpointing": True,
                                                     "teacher_quantization": "4bit"}, 1),
             "full, checkpointing, FSDP/ZeRO-3 over 8 GPUs": ({"gradient_checkpointing": True}, 8)}
    print("| teacher -> student | " + " | ".join(modes) + " |")
    print("|---" * (len(modes) + 1) + "|")
    rows = []
    for teacher, student in pairs:
        row = {"pair": f"{teacher} -> {student}"}
        for mode, (settings, shards) in modes.items():
            cfg = RunConfig(approach="distillation", student_layers=None, teacher="t", student="s", batch_size=4,
                            max_length=2048, **settings)
            row[mode] = estimate(cfg, models[student], models[teacher], "cuda", shards=shards).total / 1e9
        rows.append(row)
        print(f"| {row['pair']} | " + " | ".join(f"{row[m]:.0f} GB" for m in modes) + " |", flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="only the typical pairs' table (no training)")
    parser.add_argument("--cases", help="comma-separated case numbers (1-based) to run")
    args = parser.parse_args(argv)
    if args.table:
        typical_pairs()
        return
    names = list(CASES)
    chosen = [names[int(i) - 1] for i in args.cases.split(",")] if args.cases else names
    compare({name: CASES[name] for name in chosen})


if __name__ == "__main__":
    main()
