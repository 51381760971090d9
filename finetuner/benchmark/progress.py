"""The benchmark's progress: one rich bar per stage on a terminal (answers, timing, the draft, the
judge), the stage's step line alone otherwise (logs, pipes)."""

from __future__ import annotations

from typing import Callable

from finetuner import ui


class BenchmarkProgress:
    def __init__(self, interactive: bool | None = None):
        self.interactive = ui.is_interactive() if interactive is None else interactive
        self._bar = None
        self._task = None

    def __enter__(self) -> "BenchmarkProgress":
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=ui.console, transient=True)
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def stage(self, description: str, total: int) -> Callable[..., None]:
        """Say what runs now; returns advance(n=1) for its bar."""
        ui.step(description)
        if self._bar is None:
            return lambda n=1: None
        if self._task is not None:  # one bar at a time: the finished stage's step line stays above
            self._bar.remove_task(self._task)
        task = self._task = self._bar.add_task(description, total=total)
        return lambda n=1: self._bar.update(task, advance=n)
