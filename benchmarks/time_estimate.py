#!/usr/bin/env python
"""The plan's time estimate, phase by phase, against what a run measured.

    python benchmarks/time_estimate.py examples/distill-quick.yaml              # the plan's estimate only
    python benchmarks/time_estimate.py examples/distill-quick.yaml --run DIR    # against DIR/timings.json
    python benchmarks/time_estimate.py examples/distill-quick.yaml --time-run   # run it, then compare
    python benchmarks/time_estimate.py examples/distill-quick.yaml --time-run --busy 2   # ... beside a 2-thread job

--time-run runs `python finetune_cli.py --answers FILE --yes --overwrite` (README's main command
for examples/distill-quick.yaml) in a subprocess, wall-timed from start to exit. The run writes
OUTPUT_DIR/timings.json: the plan's estimate of every phase as shown before "Start?" (made in that
same process, by the same probe) and each phase's measured time after it. --busy N keeps a
matrix-multiplying job on N threads running for the whole run, as a shared machine would.
Without --time-run the estimate is made here, exactly as the wizard makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetuner.config import RunConfig, coerce  # noqa: E402
from finetuner.wizard.answers import load_answers, parse_overrides  # noqa: E402

BUSY_JOB = ("import torch\ntorch.set_num_threads({threads})\na = torch.randn(1024, 1024)\n"
            "while True:\n    a = torch.tanh(a @ a)\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("answers", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run", type=Path, help="a finished run's output directory (its timings.json)")
    parser.add_argument("--time-run", action="store_true", help="run the answers (--yes --overwrite), then compare")
    parser.add_argument("--busy", type=int, default=0, metavar="THREADS",
                        help="with --time-run: a competing job on this many threads for the whole run")
    args = parser.parse_args()
    answers = load_answers(args.answers)
    answers.update({key: coerce(key, value) for key, value in parse_overrides(args.set).items()})
    cfg = RunConfig(**answers)
    if args.time_run:
        report = time_run(args.answers, args.set, Path(cfg.output_dir), args.busy)
    elif args.run:
        report = compare(json.loads((args.run / "timings.json").read_text()))
    else:
        report = estimate_here(cfg)
    print(json.dumps(report, indent=1))
    return 0


def estimate_here(cfg: RunConfig) -> dict:
    from finetuner import plan

    pre = plan.preflight(cfg)
    clock = time.perf_counter()
    measured = plan.estimate(cfg, pre)
    probe_seconds = time.perf_counter() - clock
    calibrated = plan.estimate(cfg, pre, dry_run=True)
    return {"estimate": measured.as_dict(), "notes": list(measured.notes), "probe_s": round(probe_seconds, 1),
            "calibrated": calibrated.as_dict()}


def time_run(answers: Path, sets: list[str], out: Path, busy: int) -> dict:
    command = [sys.executable, str(ROOT / "finetune_cli.py"), "--answers", str(answers), "--yes", "--overwrite",
               *[f"--set={item}" for item in sets]]
    job = subprocess.Popen([sys.executable, "-c", BUSY_JOB.format(threads=busy)]) if busy else None
    started = time.perf_counter()
    try:
        status = subprocess.run(command, cwd=ROOT, env={**os.environ}).returncode
    finally:
        wall = time.perf_counter() - started
        if job is not None:
            job.terminate()
            job.wait()
    if status != 0:
        raise SystemExit(f"the run failed (exit {status}): {' '.join(command)}")
    report = compare(json.loads(((out if out.is_absolute() else ROOT / out) / "timings.json").read_text()))
    return {"command": " ".join(command), "busy_threads": busy, "process_wall_s": round(wall, 1), **report}


def compare(timings: dict) -> dict:
    """The plan's total against the measured total after "Start?", and each phase's ratio."""
    plan, measured = timings["estimate"], timings["measured"]
    phases = dict(plan["phases"])
    # The run measures model preparation and the teacher cache together, before training starts.
    before = [phases.pop(name) for name in ("model preparation", "teacher cache") if name in phases]
    if before and None not in before:
        phases["before training"] = round(sum(before), 1)
    ratios = {name: round(phases[name] / seconds, 3) for name, seconds in measured["phases"].items()
              if phases.get(name) and seconds}
    total_ratio = round(plan["total_s"] / measured["total_s"], 3) if plan["total_s"] and measured["total_s"] else None
    return {"plan": plan, "measured": measured, "estimate_over_measured": {"total": total_ratio, **ratios}}


if __name__ == "__main__":
    sys.exit(main())
