"""What generation costs: requests, tokens in and out, time, and with generation_price_in/out (per
million tokens) money; and the model card's lines on the teacher-written data, read back from
OUTPUT_DIR/generation_summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from finetuner.config import RunConfig
from finetuner.teachers.response_cache import Reply

SUMMARY_FILE = "generation_summary.json"


def prices(cfg: RunConfig) -> tuple[float, float] | None:
    """(in, out) per million tokens, when the user gave either."""
    if cfg.generation_price_in is None and cfg.generation_price_out is None:
        return None
    return cfg.generation_price_in or 0.0, cfg.generation_price_out or 0.0


def cost(tokens_in: int, tokens_out: int, price: tuple[float, float]) -> float:
    return (tokens_in * price[0] + tokens_out * price[1]) / 1e6


def money(amount: float) -> str:
    if amount >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 1e-4 or not amount else f"${amount:.6f}"


def spend(cfg: RunConfig, replies: list[Reply], new: list[Reply], seconds: float) -> dict:
    """Requests, tokens, time and cost: this run's (new requests) and the data's (cached ones too)."""
    figures = {"requests": len(replies), "new_requests": len(new), "seconds": round(seconds, 1),
               "tokens_in": sum(r.prompt_tokens for r in replies), "tokens_out": sum(r.completion_tokens for r in replies),
               "new_tokens_in": sum(r.prompt_tokens for r in new), "new_tokens_out": sum(r.completion_tokens for r in new)}
    if (price := prices(cfg)) is not None:
        figures["cost"] = round(cost(figures["tokens_in"], figures["tokens_out"], price), 6)
        figures["new_cost"] = round(cost(figures["new_tokens_in"], figures["new_tokens_out"], price), 6)
    return figures


def card_lines(out_dir: str | Path) -> list[str]:
    """The model card's section on the teacher-written data, when the run had some."""
    try:
        s = json.loads((Path(out_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return []
    dropped = ", ".join(f"{n} {reason}" for reason, n in s.get("dropped", {}).items()) or "none"
    lines = ["## Teacher-written data", "",
             f"The teacher wrote {s['total']} {s['what']}; {s['kept']} were kept for training (dropped: {dropped}; "
             f"filters: {', '.join(s.get('filters') or ['none'])}). {s['requests']} requests, "
             f"{s['tokens_in']:,} prompt and {s['tokens_out']:,} completion tokens"
             + (f", cost {money(s['cost'])}" if "cost" in s else "") + ".", ""]
    return lines
