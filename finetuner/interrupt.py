"""Ctrl-C / SIGTERM during training: finish the current step, save a checkpoint, stop.

A second Ctrl-C exits at once (the last saved checkpoint stays valid: the Trainer writes
a checkpoint completely before it is the newest one).
"""

from __future__ import annotations

import signal

from transformers import TrainerCallback

from finetuner import ui


class GracefulInterrupt(TrainerCallback):
    def __init__(self):
        self.requested = False
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
            raise KeyboardInterrupt
        self.requested = True
        ui.warning("Stopping after this step and saving a checkpoint (Ctrl-C again to quit at once)...")

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
