#!/usr/bin/env python
"""The student's forward through the model's own forward (what DDP/FSDP need) against the old direct
decoder call, side by side in one process: one distillation step's forward + backward each way.

    python benchmarks/student_forward_speed.py            # ~2 minutes on 2 cores

Built-in SmolLM2-135M-Instruct teacher (bf16) and its 15-layer student (fp32 weights, bf16 autocast,
as DistillationTrainer runs them), 4 GSM8K rows at max_length 128. The two ways alternate for
--repeats rounds; CPU time of this process (time.process_time) is reported, which other processes'
load disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)

    import torch

    from finetuner import models
    from finetuner.config import RunConfig
    from finetuner.data.preparing import make_collator, prepare
    from finetuner.logits import decoder_outputs
    from finetuner.losses import kd_loss_from_hidden

    cfg = RunConfig(approach="distillation", max_samples=16, max_length=args.max_length, output_dir="unused")
    tokenizer = models.load_tokenizer(cfg.teacher)
    data = prepare(cfg, tokenizer)
    batch = make_collator(tokenizer)([data.train[i] for i in range(args.batch_size)])
    precision = models.precision_policy()
    teacher = models.load_teacher(cfg.teacher, precision)
    student = models.derive_student(models.load_model(cfg.student), 15)
    student.train()

    def direct(model, ids, mask):
        return model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state

    def through_forward(model, ids, mask):
        return decoder_outputs(model, ids, mask).last_hidden_state

    def step(hidden_of) -> float:
        started = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = hidden_of(student, batch["input_ids"], batch["attention_mask"])
            with torch.no_grad():
                teacher_hidden = teacher.get_decoder()(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]).last_hidden_state
            loss = kd_loss_from_hidden(hidden, teacher_hidden, student.get_output_embeddings(),
                                       teacher.get_output_embeddings(), batch["labels"]).loss
        loss.backward()
        student.zero_grad(set_to_none=True)
        return time.process_time() - started

    ways = {"decoder called directly (before)": direct, "through the model's forward (now)": through_forward}
    for way in ways.values():  # warm-up
        step(way)
    seconds = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            seconds[name].append(step(way))
    for name, values in seconds.items():
        print(f"{name}: median {statistics.median(values):.3f} s CPU per step  ({', '.join(f'{v:.2f}' for v in values)})")
    before, now = (statistics.median(v) for v in seconds.values())
    print(f"ratio now / before: {now / before:.3f}  ({args.repeats} alternating rounds, batch {args.batch_size} x "
          f"{args.max_length}, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
