"""The one console, the one user-facing error type, and the summary table.

Message lines never wrap (soft_wrap): hints often hold a command to copy and paste.

Everything the user reads goes through `console`. User strings are printed with
markup=False so a model id like `[org/model]` is never read as rich markup.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Mapping

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class UserError(Exception):
    """A problem the user can fix. Shown as one line plus a hint, never as a traceback."""

    def __init__(self, message: str, hint: str | None = None, details: Iterable[str] = ()):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details)


def is_interactive() -> bool:
    # One of several processes (torchrun, accelerate launch) never asks: every rank must resolve
    # the same answers, so they come from the answers file and --set alone.
    return sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("WORLD_SIZE", "1") == "1"


def step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {_escape(text)}", soft_wrap=True)


def info(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True)


def success(text: str) -> None:
    console.print(f"[bold green]✔[/] {_escape(text)}", soft_wrap=True)


def warning(text: str) -> None:
    console.print(f"[bold yellow]![/] {_escape(text)}", soft_wrap=True)


def error(err: UserError, rank: int | None = None) -> None:
    where = "" if rank is None else f" (rank {rank})"
    err_console.print(f"[bold red]Error{where}:[/] {_escape(err.message)}", soft_wrap=True)
    for line in err.details:
        err_console.print(f"  - {_escape(line)}", soft_wrap=True)
    if err.hint:
        err_console.print(f"[dim]Hint:[/] {_escape(err.hint)}", soft_wrap=True)


def table(title: str, rows: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
    """A two-column key/value table (the run summary, the training result)."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    grid = Table(title=title, show_header=False, title_justify="left")
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in items:
        grid.add_row(str(key), "-" if value is None else str(value))
    console.print(grid)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))
