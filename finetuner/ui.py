"""The one console, the one user-facing error type, the summary table, the prompts and byte sizes.

Message lines never wrap (soft_wrap): hints often hold a command to copy and paste.

Everything the user reads goes through `console`. User strings are printed with
markup=False so a model id like `[org/model]` is never read as rich markup.

Every question the user answers at the terminal goes through the prompts below, the one place
questionary is called. Each raises KeyboardInterrupt on Ctrl-C, which the CLI turns into
"Cancelled." and exit status 130.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Mapping

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
    """A person at a terminal: progress bars instead of plain lines, and (unless `--yes`) questions."""
    # One of several processes (torchrun, accelerate launch) never asks: every rank must resolve
    # the same answers, so they come from the answers file and --set alone.
    return sys.stdin.isatty() and sys.stdout.isatty() and os.environ.get("WORLD_SIZE", "1") == "1"


_prompts_forbidden = False


def forbid_prompts(forbidden: bool = True) -> None:
    """`--yes`: nothing is asked, ever, even at a terminal (`cmd --yes && next` must not stop)."""
    global _prompts_forbidden
    _prompts_forbidden = forbidden


def can_ask() -> bool:
    """Whether a question may be put to the user now: a terminal, and no `--yes`."""
    return is_interactive() and not _prompts_forbidden


def flush_typeahead() -> None:
    """Drop keys typed while nothing was asking (an Enter pressed during the checks), so they cannot
    answer the next question, "Start?" above all."""
    if not sys.stdin.isatty():
        return
    try:
        import termios

        termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)
    except (ImportError, OSError, ValueError):  # no termios (Windows), or a closed stdin
        pass


def step(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {escape(text)}", soft_wrap=True)


def info(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True)


def success(text: str) -> None:
    console.print(f"[bold green]✔[/] {escape(text)}", soft_wrap=True)


def warning(text: str) -> None:
    console.print(f"[bold yellow]![/] {escape(text)}", soft_wrap=True)


def error(err: UserError, rank: int | None = None) -> None:
    where = "" if rank is None else f" (rank {rank})"
    err_console.print(f"[bold red]Error{where}:[/] {escape(err.message)}", soft_wrap=True)
    for line in err.details:
        err_console.print(f"  - {escape(line)}", soft_wrap=True)
    if err.hint:
        err_console.print(f"[dim]Hint:[/] {escape(err.hint)}", soft_wrap=True)


def table(title: str, rows: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
    """A two-column key/value table (the run summary, the training result)."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    grid = Table(title=title, show_header=False, title_justify="left")
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in items:
        grid.add_row(str(key), "-" if value is None else str(value))
    console.print(grid)


def tracked(items: list, description: str):
    """`items`, one by one, behind a progress bar on a terminal (a phase that may take more than a
    few seconds must show it is moving); plain iteration elsewhere."""
    if not is_interactive():
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(escape(description)), BarColumn(bar_width=20), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("", total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def escape(text: str) -> str:
    """`text` made safe to put inside rich markup (a user string between [dim] and [/])."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def size(num_bytes: float) -> str:
    """A byte count as people read it: "512 bytes", "3.4 MB", "340 MB", "1.2 GB", "1,234 GB".

    Decimal units, as disks and memory plans are quoted; two significant digits at least. GB is the
    largest unit, so sizes from the disk check, the memory plan and the teacher cache compare at a glance."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.1f} {unit}" if round(value, 1) < 10 else f"{value:,.0f} {unit}"
    return f"{num_bytes:.0f} bytes"


# ---- prompts --------------------------------------------------------------------------------
# questionary is imported inside each prompt: it is only needed once a question is asked.

def _may_ask(message: str) -> None:
    """Under `--yes` a question is a bug in the caller: say which, instead of waiting for a key."""
    if _prompts_forbidden:
        raise UserError(f"--yes asks nothing, but this question came up: {message}",
                        hint="answer it in the answers file or with --set KEY=VALUE, or run without --yes")


def confirm(message: str, default: bool = False) -> bool:
    """Yes or no."""
    _may_ask(message)
    import questionary

    return bool(questionary.confirm(message, default=default).unsafe_ask())


def choose(message: str, choices: Iterable[tuple[str, Any]], default: Any = None, search: bool = False) -> Any:
    """The value of one of `choices` ((title, value) pairs), the one whose value is `default`
    highlighted first. `search`: typing filters the list (so j and k are letters, not moves)."""
    _may_ask(message)
    import questionary

    options = [questionary.Choice(title, value=value) for title, value in choices]
    chosen = next((option for option in options if option.value == default), None)
    filtering = {"use_search_filter": True, "use_jk_keys": False} if search else {}
    return questionary.select(message, choices=options, default=chosen, **filtering).unsafe_ask()


def secret(message: str) -> str:
    """Typed text shown as stars, for a token."""
    _may_ask(message)
    import questionary

    return questionary.password(message).unsafe_ask()


def text(message: str, default: Any = None, paths: bool = False) -> Any:
    """Typed text, `default` when the user just presses Enter.

    The default is not prefilled: it shows greyed out and Enter takes it, so typing replaces it
    rather than appending to it. `paths`: Tab completes file names."""
    _may_ask(message)
    import questionary
    from prompt_toolkit.formatted_text import FormattedText

    shown = "" if default is None else str(default)
    placeholder = FormattedText([("fg:ansibrightblack", shown)])
    prompt = questionary.path if paths else questionary.text
    typed = prompt(message, placeholder=placeholder).unsafe_ask()
    return default if not str(typed).strip() else typed
