"""The learning-rate schedule: a short linear warmup over a share of the run's real steps, then linear decay.

transformers' linear warmup gives step 1 a learning rate of 0 (its factor is step / warmup, from
step 0), and `warmup_steps` below 1 is read as a share of the steps rounded up, so a 4-step run
warmed up for a whole step at lr 0: a quarter of its training wasted. Here step s (from 0) runs at
(s + 1) / (warmup + 1) of the peak during warmup, and warmup is WARMUP_SHARE of the steps rounded
down, so runs under 34 steps have none and no step ever runs at 0.
"""

from __future__ import annotations

from transformers import Trainer

WARMUP_SHARE = 0.03


def warmup_steps(total_steps: int) -> int:
    return int(WARMUP_SHARE * total_steps)


def factor(step: int, warmup: int, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) over the peak."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


class WarmupTrainer(Trainer):
    """The Trainer with `factor`'s schedule; everything else is the Trainer's own."""

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            from functools import partial

            from torch.optim.lr_scheduler import LambdaLR

            warmup = warmup_steps(num_training_steps)
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                         partial(factor, warmup=warmup, total=num_training_steps))
            self._created_lr_scheduler = True
        return self.lr_scheduler
