"""The report as text tables: on the terminal (`show`) and in the model card (`table_rows`, `cost_rows`)."""

from __future__ import annotations

from finetuner import ui
from finetuner.benchmark.scores import METRICS

QUALITY_HEADERS = ("Model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Fid. RL", "Top-1", "PPL", "Loops")
COST_HEADERS = ("Model", "Params", "Disk MB", "Tok/s", "Peak MB")
TASK_HEADERS = ("Model", "Strict", "Flexible", "Judge 1-5")
COST_NOTE = "Tok/s: decoding one batch of 8, best of alternate timings; Peak MB: while decoding it"


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


def task_rows(report: dict) -> list[list[str]]:
    """Exact match (strict, flexible; ± standard error) and the judge's mean (95% interval) per model;
    no rows when neither was measured."""
    if not any(m.get("accuracy") or m.get("judge") for m in report["models"]):
        return []
    return [[m["label"], _accuracy(m, "strict"), _accuracy(m, "flexible"), _judged(m.get("judge"))]
            for m in report["models"]]


def task_note(report: dict) -> str:
    notes = []
    metric = report.get("task_metric") or {}
    if metric.get("used"):
        notes.append("Strict/Flexible = exact match of the final answer ± standard error (README: extraction)")
    elif metric:
        notes.append(f"no exact match: {metric.get('why')}")
    if report.get("judge"):
        notes.append(f"Judge = {report['judge']['model']}'s mean score on the rubric, with its 95% interval")
    return "; ".join(notes)


def _accuracy(model: dict, kind: str) -> str:
    found = (model.get("accuracy") or {}).get(kind)
    return "-" if not found else f"{found['accuracy']:.0%} ±{found['stderr']:.0%}"


def _judged(judged: dict | None) -> str:
    if not judged or judged.get("mean") is None:
        return "-"
    low, high = judged.get("low"), judged.get("high")
    bounds = "" if low is None or high is None or abs(low) == float("inf") else f" [{low:.1f}, {high:.1f}]"
    return f"{judged['mean']:.2f}{bounds}"


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
              ("Size and speed", COST_HEADERS, cost_rows(report), COST_NOTE)]
    if task_rows(report):
        tables.insert(1, ("Task accuracy and judge", TASK_HEADERS, task_rows(report), task_note(report)))
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

