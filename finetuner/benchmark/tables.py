"""The report as text tables: on the terminal (`show`) and in the model card (`table_rows`, `cost_rows`)."""

from __future__ import annotations

from finetuner import ui
from finetuner.benchmark.scores import METRICS

QUALITY_HEADERS = ("Model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Fid. RL", "Top-1", "PPL", "Loops")
COST_HEADERS = ("Model", "Params", "Disk MB", "Tok/s", "Peak MB")


def table_rows(report: dict) -> list[list[str]]:
    """The quality comparison as text cells (QUALITY_HEADERS): one row per model, then the "Δ"
    and "retained" rows (`table_note` says what they compare). Shared by the terminal and the model card."""
    rows = [[m["label"], *(f"{m['rouge'][k]:.3f}" for k in METRICS), _fixed(m.get("fidelity_rougeL")),
             _percent(m.get("top1_agreement")), _fixed(m.get("perplexity"), 2), _percent(m.get("loop_rate"))]
            for m in report["models"]]
    blank = [""] * (len(QUALITY_HEADERS) - 1 - len(METRICS))
    if report.get("deltas"):
        rows.append(["Δ", *(f"{report['deltas'][k]:+.3f}" for k in METRICS), *blank])
    if report.get("retained"):
        rows.append(["retained", *(_percent(report["retained"][k]) for k in METRICS), *blank])
    return rows


def cost_rows(report: dict) -> list[list[str]]:
    """Size and speed as text cells (COST_HEADERS), one row per model."""
    return [[m["label"], _millions(m["parameters"]), _fixed(m["size_on_disk_mb"], 1),
             _fixed(m["tokens_per_s"], 1), _fixed(m["peak_memory_mb"], 0)] for m in report["models"]]


def table_note(report: dict) -> str:
    notes = []
    if report.get("deltas"):
        notes.append(f"Δ = {report['final']} minus {report['baseline']}")
    if report.get("retained"):
        notes.append(f"retained = {report['final']} as a share of {report['teacher']}")
    if report.get("teacher"):
        notes.append(f"Fid. RL = ROUGE-L against {report['teacher']}'s answers; Top-1 = agreement with "
                     f"{report['teacher']}'s top-1 token on the references")
    notes.append("PPL = perplexity of the references; Loops = share of answers repeating a 4-gram 3+ times")
    return "; ".join(notes)


def _millions(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


def _fixed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.0%}"


def show(report: dict, show_samples: int = 0) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No vertical rules: eight columns must fit an 80-column terminal with room for labels.
    tables = [(f"Benchmark: quality on {report.get('samples', '?')} held-out prompts", QUALITY_HEADERS,
               table_rows(report), table_note(report)),
              ("Size and speed", COST_HEADERS, cost_rows(report), "Tok/s and Peak MB: decoding one batch of 8")]
    for title, headers, rows, note in tables:
        grid = Table(title=title, title_justify="left", caption=Text(note) if note else None,
                     caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, header in enumerate(headers):
            grid.add_column(header, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            grid.add_row(*(Text(cell) for cell in row))  # Text: labels are user strings, not markup
        ui.console.print(grid)
    if report.get("verdict"):
        ui.console.print(Text("Verdict: " + report["verdict"]["summary"], style="bold"))
        for check in report["verdict"]["checks"]:
            ui.console.print(Text("  " + check["text"]))
    for model in report["models"]:
        for sample in model["samples"][:show_samples]:
            ui.info(f"[{model['label']}] Q: {sample['prompt']}\n  expected: {sample['reference']}\n"
                    f"  answered: {sample['generation']}")

