"""What came of the teacher's writing: which responses are kept and why each other one is dropped,
what it cost, and whether there is enough to train on.

After generation the user sees the kept and dropped counts with a reason per drop, three kept
samples, and the requests, tokens, time and (with prices) cost. Below generation_min_kept, or with
fewer rows than one batch (batch_size), the run stops with one line and a hint; the responses
stay in the cache, so a rerun with --resume requests nothing again. The figures are kept in
OUTPUT_DIR/generation_summary.json, which the model card reads (spend.py).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from finetuner import artifacts, ui
from finetuner.config import RunConfig
from finetuner.teachers.filters import CUT_OFF, TOO_LONG, Judge, filter_names, verdict_of
from finetuner.teachers.response_cache import Reply
from finetuner.teachers.spend import SUMMARY_FILE, money

@dataclass
class Outcome:
    what: str  # "responses" or "answers"
    reasons: list  # per row: None (kept) or why it is dropped
    samples: list = field(default_factory=list)  # (prompt, response) of kept rows
    truncated: int = 0  # kept rows training cuts at max_length (long_rows truncate)
    notes: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.reasons)

    @property
    def kept(self) -> int:
        return self.reasons.count(None)

    @property
    def dropped(self) -> Counter:
        return Counter(r for r in self.reasons if r is not None)


def sort_out(cfg: RunConfig, tokenizer, rows: list[tuple[dict, Reply | None, str | None]], what: str) -> Outcome:
    """Judge each (example, reply, reference) in order; a kept row's training row is measured with
    the student's tokenizer against max_length."""
    from finetuner.data.preparing import cut_at_max_length

    filters = filter_names(cfg.generation_filters)
    judge = Judge(filters, cfg.generation_drop_incomplete)
    reasons = [judge.reason(reply, example["prompt"], reference) for example, reply, reference in rows]
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    written = [{**rows[i][0], "response": rows[i][1].text.strip()} for i in kept]
    outcome = Outcome(what, reasons)
    for i, cut in zip(kept, cut_at_max_length(written, tokenizer, cfg.max_length)):
        if cut and cfg.long_rows == "drop":
            reasons[i] = TOO_LONG
        outcome.truncated += cut and cfg.long_rows != "drop"
    outcome.samples = [(rows[i][0]["prompt"], rows[i][1].text.strip()) for i in kept if reasons[i] is None]
    if "verified" in filters:
        unchecked = sum(verdict_of(r.text, ref) is None for (_, r, ref), why in zip(rows, reasons) if why is None)
        if unchecked:
            outcome.notes.append(f"verified: {unchecked} kept {what} have no checkable reference answer")
    return outcome


def show(outcome: Outcome, cfg: RunConfig, cache_path: Path, count: int = 3) -> None:
    """Kept and dropped counts with their reasons, and a few kept samples to read before training."""
    ui.step(f"Teacher {outcome.what}: {outcome.kept} of {outcome.total} kept for training")
    if outcome.dropped:
        ui.info("  dropped: " + ", ".join(f"{n} {_reason_words(reason, cfg)}"
                                          for reason, n in outcome.dropped.most_common()))
    if outcome.truncated:
        ui.info(f"  {outcome.truncated} kept {outcome.what} will be cut at max_length ({cfg.max_length} tokens; "
                "long_rows truncate)")
    for note in outcome.notes:
        ui.info(f"  {note}")
    if outcome.samples:
        ui.info(f"  {min(count, len(outcome.samples))} kept samples (all responses are in {cache_path}):")
    for prompt, response in outcome.samples[:count]:
        ui.info(f"    prompt:   {one_line(prompt)}")
        ui.info(f"    response: {one_line(response)}")


def _reason_words(reason: str, cfg: RunConfig) -> str:
    if reason == CUT_OFF:
        return f"cut off at generation_max_new_tokens ({cfg.generation_max_new_tokens})"
    if reason == TOO_LONG:
        return f"too long for max_length ({cfg.max_length} tokens)"
    return reason


def check_enough(outcome: Outcome, cfg: RunConfig, cache_path: Path, resume_command: str) -> None:
    """Stop before training on almost nothing, unless generation_min_kept is 0 (and something is kept)."""
    kept, total = outcome.kept, outcome.total
    batch = cfg.batch_size
    if kept and not cfg.generation_min_kept:
        return
    if kept and kept / total >= cfg.generation_min_kept and kept >= batch:
        return
    why = (f"below generation_min_kept {cfg.generation_min_kept:g}" if kept / max(total, 1) < cfg.generation_min_kept
           else f"fewer than one batch (batch_size {batch})") if kept else "nothing to train on"
    top = outcome.dropped.most_common(2)
    reasons = f" ({', '.join(f'{n} {_reason_words(r, cfg)}' for r, n in top)})" if top else ""
    hint = f"edit the responses in {cache_path}, then run:  {resume_command}"
    if top and top[0][0] == CUT_OFF:
        hint = (f"raise generation_max_new_tokens (now {cfg.generation_max_new_tokens}); or {hint} "
                "(a fixed cut-off response also needs \"finish_reason\": \"stop\")")
    raise ui.UserError(f"only {kept} of {total} teacher {outcome.what} are usable{reasons}: {why}",
                       hint=hint + ("; generation_min_kept 0 trains on what is left" if kept else ""))


def show_spend(figures: dict) -> None:
    from finetuner.summary import duration

    cached = figures["requests"] - figures["new_requests"]
    line = (f"Generation: {figures['requests']} requests ({cached} from the cache), {figures['tokens_in']:,} tokens "
            f"in, {figures['tokens_out']:,} out; {duration(figures['seconds'])} this run")
    if "cost" in figures:
        line += f"; cost {money(figures['new_cost'])} this run ({money(figures['cost'])} for all the data)"
    ui.info(line)


def record(out_dir: str | Path, cfg: RunConfig, outcome: Outcome, figures: dict) -> Path:
    summary = {"teacher": cfg.teacher, "what": outcome.what, "kept": outcome.kept, "total": outcome.total,
               "dropped": dict(outcome.dropped), "filters": filter_names(cfg.generation_filters), **figures}
    return artifacts.write_text_atomic(Path(out_dir) / SUMMARY_FILE, json.dumps(summary, indent=1))


def one_line(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
