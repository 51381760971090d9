#!/usr/bin/env python
"""What the student buys as its teacher's speculative draft: the built-in teacher's tokens/s alone and
with its 15-layer student as `assistant_model`, on held-out GSM8K prompts.

    python benchmarks/speculative.py --run runs/distill-quick     # the quick run's trained student (~4 min)
    python benchmarks/speculative.py                              # an untrained 15-layer student
    python benchmarks/speculative.py --prompts 1 --new-tokens 8 --repeats 1   # a check that it works

finetuner's own measurement (finetuner/benchmark/speculative.py, what the benchmark's "as a draft"
line reports): one prompt at a time, greedy, the teacher alone and assisted alternating prompt by
prompt in swapped order on each repeat, each mode's best repeat. It reports the speed-up, the
acceptance rate (drafted tokens the teacher kept), and whether every assisted output is identical to
the teacher's own. With --run, the prompts are that run's held-out prompts (never trained on) and the
student is its trained model; otherwise the last GSM8K rows and a student derived by keeping 15 of
the teacher's 30 layers, untrained (a lower bound: training makes it agree with its teacher).
Goal (issue: the quick run): >= 1.3x, lossless.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prompts_and_student(run: Path | None, count: int, layers: int):
    from finetuner import artifacts, models
    from finetuner.config import BUILTIN_MODEL
    from finetuner.sources import builtin_dataset_file

    if run is not None:
        rows = artifacts.read_heldout(run)[:count]
        return [row.get("messages") or row["prompt"] for row in rows], models.load_model(str(run / artifacts.MODEL_DIR)), \
            f"{run / artifacts.MODEL_DIR} (trained)"
    lines = builtin_dataset_file("gsm8k").read_text().splitlines()[-count:]
    student = models.derive_student(models.load_model(BUILTIN_MODEL), layers)
    return [json.loads(line)["question"] for line in lines], student, f"{layers} of the teacher's layers, untrained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished distillation run's output directory (model/, heldout.jsonl)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=15, help="without --run: layers the derived student keeps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from finetuner import models
    from finetuner.benchmark import speculative
    from finetuner.config import BUILTIN_MODEL

    torch.manual_seed(0)
    teacher, tokenizer = models.load_model(BUILTIN_MODEL), models.load_tokenizer(BUILTIN_MODEL)
    prompts, student, described = prompts_and_student(args.run, args.prompts, args.layers)
    found = speculative.measure(teacher, student, tokenizer, prompts, args.new_tokens, args.repeats,
                                on_answer=lambda: print(".", end="", flush=True))
    print()
    result = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "teacher": BUILTIN_MODEL, "student": described,
              "teacher_dtype": str(teacher.dtype), "student_dtype": str(student.dtype), **found}
    print(f"teacher alone     {found['teacher_tokens_per_s']:7.1f} tokens/s (best of {args.repeats}: "
          f"{', '.join(f'{s:.1f} s' for s in found['alone_s'])})")
    print(f"student as draft  {found['draft_tokens_per_s']:7.1f} tokens/s (best of {args.repeats}: "
          f"{', '.join(f'{s:.1f} s' for s in found['draft_s'])})")
    acceptance = "-" if found["acceptance"] is None else f"{found['acceptance']:.0%}"
    print(f"speed-up {found['speedup']:.2f}x (repeats {', '.join(f'{r:.2f}x' for r in found['speedup_repeats'])}); "
          f"acceptance {acceptance} ({found['accepted']} of {found['drafted']} drafted tokens); outputs identical "
          f"on {found['identical']} of {found['prompts']} prompts")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"speculative-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
