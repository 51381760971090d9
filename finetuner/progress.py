"""Training progress: a rich bar on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import time

from transformers import TrainerCallback

from finetuner import ui


def _describe(logs: dict, tokens_per_s: float | None, width: int | None = None) -> str:
    """The step's figures, the most telling first kept: `width` (characters) drops the rest, so the
    progress line stays one line on a narrow terminal."""
    parts = [f"loss {logs['loss']:.4f}"] if "loss" in logs else []
    parts += [f"{name.upper()} {logs[name]:.4f}" for name in ("ce", "kl") if name in logs]
    parts += [f"hidden {logs['hidden']:.4f}"] if "hidden" in logs else []
    if "gen_len" in logs:  # on-policy: how long the student's own answers are (length collapse shows here)
        parts.append(f"sampled {logs['gen_len']:.0f} tok")
    parts += [f"epoch {logs['epoch']:.2f}"] if "epoch" in logs else []
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if tokens_per_s:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    kept: list[str] = []
    for part in parts:
        if width is not None and len("  ".join([*kept, part])) > width:
            break
        kept.append(part)
    return "  ".join(kept)


# What the bar's columns take before the figures: "training", the bar, 68/68, elapsed and ETA.
_COLUMNS_WIDTH = 72


class ProgressReporter(TrainerCallback):
    """Step, elapsed time and ETA (labelled), epoch, learning rate, loss (CE and KL when distilling)
    and counted tokens/s; the training time when it ends."""

    def __init__(self, interactive: bool | None = None, every: int | None = None):
        self.interactive = ui.is_interactive() if interactive is None else interactive
        self.every = every
        self.progress = None
        self.task = None
        self.started = 0.0
        self.first_step = 0
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.first_step = state.global_step
        self.tokens_at_start = state.num_input_tokens_seen
        if self.interactive:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn("[bold]training"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                     TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), TextColumn("{task.description}"),
                                     console=ui.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step)
        else:
            ui.info(f"training: {state.max_steps} steps")

    def tokens_per_s(self, state) -> float | None:
        elapsed = time.perf_counter() - self.started
        tokens = state.num_input_tokens_seen - self.tokens_at_start
        return tokens / elapsed if elapsed > 0 and tokens else None

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if self.progress is not None:
            room = max(20, ui.console.width - _COLUMNS_WIDTH)
            self.progress.update(self.task, description=_describe(logs, self.tokens_per_s(state), room))
            return
        text = _describe(logs, self.tokens_per_s(state))
        every = self.every or max(1, state.max_steps // 20)
        if state.global_step % every == 0 or state.global_step == state.max_steps:
            done = state.global_step - self.first_step
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done * (state.max_steps - state.global_step) if done else 0
            ui.info(f"step {state.global_step}/{state.max_steps}  elapsed {elapsed:.0f}s  ETA {eta:.0f}s  {text}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        from finetuner.summary import duration

        ui.info(f"training took {duration(time.perf_counter() - self.started)} "
                f"({state.global_step - self.first_step} steps)")
