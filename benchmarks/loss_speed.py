#!/usr/bin/env python
"""The fast path's cost per divergence, and forward KL against another commit's losses.py.

    python benchmarks/loss_speed.py --against main   # about 70 CPU seconds

`kd_loss_from_hidden` forward + backward on SmolLM2-sized heads (hidden 576, vocabulary 49,152,
bf16 teacher head, bf16 autocast as in training), batch 4 x 160 with a 40-token prompt (480 counted
rows). Process CPU seconds, medians of alternating repeats, so other jobs on the machine weigh less.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_losses_at(ref: str):
    source = subprocess.run(["git", "show", f"{ref}:finetuner/losses.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "losses_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("losses_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main", help="git ref whose losses.py forward KL is compared")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from finetuner import losses

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab, width, batch, length = 49152, 576, 4, 160
    student_head = torch.nn.Linear(width, vocab, bias=False)
    teacher_head = torch.nn.Linear(width, vocab, bias=False).bfloat16()
    student_hidden = torch.randn(batch, length, width, requires_grad=True)
    teacher_hidden = torch.randn(batch, length, width).bfloat16()
    labels = torch.randint(0, vocab, (batch, length))
    labels[:, :40] = -100

    reference = load_losses_at(args.against)
    cases = {f"forward_kl ({args.against})": (reference, {}),
             "forward_kl": (losses, {"divergence": "forward_kl"}),
             "reverse_kl": (losses, {"divergence": "reverse_kl"}),
             "jsd (beta 0.5)": (losses, {"divergence": "jsd", "beta": 0.5})}

    def once(module, kwargs) -> float:
        started = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module.kd_loss_from_hidden(student_hidden, teacher_hidden, student_head, teacher_head, labels,
                                             chunk_size=2**25 // vocab, **kwargs)
        out.loss.backward()
        student_hidden.grad = None
        return time.process_time() - started

    for module, kwargs in cases.values():  # warm-up
        once(module, kwargs)
    times = {name: [] for name in cases}
    for repeat in range(args.repeats):
        order = list(cases.items()) if repeat % 2 == 0 else list(cases.items())[::-1]
        for name, (module, kwargs) in order:
            times[name].append(once(module, kwargs))
    base = statistics.median(times["forward_kl"])
    print(f"{int((labels[:, 1:] != -100).sum())} counted rows, vocabulary {vocab}, {args.threads} threads; "
          "process CPU seconds for the loss's forward + backward, median of", args.repeats)
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24} {median:6.3f} s  {median / base:5.2f}x forward KL   {[round(v, 2) for v in values]}")


if __name__ == "__main__":
    main()
