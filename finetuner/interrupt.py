"""Ctrl-C / SIGTERM during training: finish the current step, save a checkpoint, stop.

A second Ctrl-C exits at once (the last saved checkpoint stays valid: the Trainer writes
a checkpoint completely before it is the newest one).

With several processes, every rank stops at the same step (a rank that stopped alone would
leave the others waiting in the next all-reduce). Under a launcher a terminal's Ctrl-C reaches each
rank twice, from the terminal and forwarded by torchrun, so there a repeat within a second counts
as one.
"""

from __future__ import annotations

import signal
import time

from transformers import TrainerCallback

from finetuner import distributed, ui

REPEAT_WINDOW_S = 1.0


class GracefulInterrupt(TrainerCallback):
    def __init__(self):
        self.requested = False
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulInterrupt":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if distributed.launched() and time.monotonic() - self._first_at < REPEAT_WINDOW_S:
                return  # the same Ctrl-C, forwarded by the launcher
            raise KeyboardInterrupt
        self.requested = True
        self._first_at = time.monotonic()
        ui.warning("Stopping after this step and saving a checkpoint (Ctrl-C again to quit at once)...")

    def on_step_end(self, args, state, control, **kwargs):
        # A collective on every rank and step: one scalar, negligible next to the gradients' all-reduce.
        if distributed.world_size() > 1:
            self.requested = distributed.any_rank(self.requested, args.device)
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
