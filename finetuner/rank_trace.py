"""A debug record for checking a distributed run from outside (the 2-process test reads it).

With FINETUNER_TRACE_DIR set, each rank writes `rank{R}.jsonl`, one line per optimizer step with
the rows it trained on (a hash of each row's unpadded input_ids) and a digest of its trainable
weights, and `rank{R}-step{S}.pt`, the weights themselves (meant for tiny models).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from transformers import TrainerCallback

from finetuner.distributed import rank, world_size
from finetuner.logits import unwrapped

TRACE_ENV = "FINETUNER_TRACE_DIR"


class RankTrace(TrainerCallback):
    """Per step, per rank: the rows trained on and the trainable weights (see the module doc)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows: list[str] = []

    @classmethod
    def from_env(cls) -> "RankTrace | None":
        return cls(os.environ[TRACE_ENV]) if os.environ.get(TRACE_ENV) else None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A pre-hook on the student's decoder sees exactly the rows each forward trains on (the
        # dataloader prefetches, so the collator would see them a batch early).
        decoder = unwrapped(model).get_decoder()
        decoder.register_forward_pre_hook(self._record_rows, with_kwargs=True)
        self._save_weights(model, state.global_step)

    def _record_rows(self, module, args, kwargs):
        if module.training:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            self.rows += [row_hash(row[keep.bool()].tolist()) for row, keep in zip(ids, mask)]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        digest = self._save_weights(model, state.global_step)
        line = {"rank": rank(), "world_size": world_size(), "step": state.global_step, "rows": self.rows,
                "weights_sha1": digest}
        with open(self.directory / f"rank{rank()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.rows = []


    def _save_weights(self, model, step: int) -> str:
        import torch

        weights = {name: p.detach().float().cpu().clone() for name, p in unwrapped(model).named_parameters()
                   if p.requires_grad}
        torch.save(weights, self.directory / f"rank{rank()}-step{step}.pt")
        return hashlib.sha1(b"".join(w.numpy().tobytes() for w in weights.values())).hexdigest()


def row_hash(input_ids) -> str:
    return hashlib.sha1(json.dumps([int(i) for i in input_ids]).encode()).hexdigest()[:16]
