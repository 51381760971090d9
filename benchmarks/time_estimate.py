#!/usr/bin/env python
"""The plan's time estimate against the measured training time of a finished run.

    python benchmarks/time_estimate.py examples/distill-quick.yaml            # estimate only
    python benchmarks/time_estimate.py examples/distill-quick.yaml --run DIR  # and compare with DIR's training

It makes the estimate exactly as the wizard does before "Start?" (the probe step, and the
calibrated fallback beside it), then reads `training_log.json` of a run trained on the same answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetuner import plan  # noqa: E402
from finetuner.config import RunConfig, coerce  # noqa: E402
from finetuner.wizard.answers import load_answers, parse_overrides  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("answers", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run", type=Path, help="a finished run's output directory to compare with")
    args = parser.parse_args()
    answers = load_answers(args.answers)
    answers.update({key: coerce(key, value) for key, value in parse_overrides(args.set).items()})
    cfg = RunConfig(**answers)
    pre = plan.preflight(cfg)
    clock = time.perf_counter()
    measured = plan.estimate(cfg, pre)
    probe_seconds = time.perf_counter() - clock
    calibrated = plan.estimate(cfg, pre, dry_run=True)
    report = {"estimate_s": round(measured.seconds, 1), "how": measured.how, "probe_s": round(probe_seconds, 1),
              "calibrated_s": round(calibrated.seconds, 1)}
    if args.run:
        trained = json.loads((args.run / "training_log.json").read_text())["seconds"]
        report |= {"trained_s": trained, "estimate_over_trained": round(measured.seconds / trained, 3),
                   "calibrated_over_trained": round(calibrated.seconds / trained, 3)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
