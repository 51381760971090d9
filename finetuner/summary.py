"""The last thing a run prints: where the model is, whether it paid, how long it took, and three
commands to copy: load it in Python, chat with it, upload it."""

from __future__ import annotations

import shlex
from pathlib import Path

from finetuner import artifacts, ui


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def model_location(out_dir: Path) -> tuple[Path, bool]:
    """(folder, is_adapter): the standalone model when there is one, else the adapter."""
    model_dir = out_dir / artifacts.MODEL_DIR
    return (model_dir, False) if model_dir.is_dir() else (out_dir / artifacts.ADAPTER_DIR, True)


def verdict_line(out_dir: Path) -> str | None:
    """benchmark.json's one-line verdict (written by the benchmark), else the ROUGE-L change."""
    from finetuner.benchmark import comparison

    report = comparison.load(out_dir)
    if not report:
        return None
    verdict = report.get("verdict")
    if isinstance(verdict, dict) and verdict.get("summary"):
        return str(verdict["summary"])
    final = report["models"][-1]["rouge"].get("rougeL")
    if report.get("deltas"):
        return f"ROUGE-L {final:.3f} ({report['deltas']['rougeL']:+.3f} against {report['baseline']})"
    return f"ROUGE-L {final:.3f}" if final is not None else None


def commands(out_dir: Path, hub_repo: str | None, uploaded: str | None) -> list[tuple[str, str]]:
    folder, adapter = model_location(out_dir)
    loader = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    package = "peft" if adapter else "transformers"
    quoted = str(folder).replace("'", "\\'")
    load = (f"python -c \"from {package} import {loader}; from transformers import AutoTokenizer; "
            f"model = {loader}.from_pretrained('{quoted}'); tokenizer = AutoTokenizer.from_pretrained('{quoted}')\"")
    chat = f"python finetune_cli.py --chat {shlex.quote(str(out_dir))}"
    if uploaded:
        upload = f"already uploaded: {uploaded}"
    else:
        from finetuner.hub import upload_command

        upload = upload_command(out_dir, hub_repo)
    return [("load in Python", load), ("chat with it", chat), ("upload it", upload)]


def show(out_dir: str | Path, training_seconds: float | None, total_seconds: float, estimate: float | None = None,
         hub_repo: str | None = None, uploaded: str | None = None) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    out = Path(out_dir)
    folder, adapter = model_location(out)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("model", Text(f"{folder}" + ("  (LoRA adapter; load it on its base model)" if adapter else "")))
    if (line := verdict_line(out)) is not None:
        grid.add_row("verdict", Text(line))
    times = f"{duration(total_seconds)} in all"
    if training_seconds is not None:
        times += f", training {duration(training_seconds)}"
        if estimate:
            times += f" (the plan estimated {duration(estimate)})"
    grid.add_row("time", Text(times))
    for label, command in commands(out, hub_repo, uploaded):
        grid.add_row(label, Text(command))
    ui.console.print(Panel(grid, title="Done", title_align="left", border_style="green"), soft_wrap=False)
