"""Asking the teacher for what the cache lacks: a live progress line (done/total, tokens, time left
and, with prices, the cost so far and projected), the spend cap, and faults that keep what arrived.

After a run with enough new replies, the measured rate is kept beside the cache
(`teacher_rates.json`, per teacher), so the next plan can estimate generation time before "Start?".
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from finetuner import artifacts, ui
from finetuner.config import RunConfig
from finetuner.teachers.response_cache import ResponseCache, Reply, Request
from finetuner.teachers.spend import cost, money, prices

RATES_FILE = "teacher_rates.json"
_MIN_TIMED = 4  # replies needed before a rate (or a live projection) means anything


def write_responses(cfg: RunConfig, teacher, cache: ResponseCache, requests: list[Request],
                    resume_command: str, what: str = "responses") -> None:
    """Ask the teacher for every request the cache lacks; each reply is cached as it arrives."""
    todo = cache.missing(requests)
    if not todo:
        return
    cap = cfg.generation_token_budget
    stop = (lambda: cache.tokens_spent >= cap) if cap is not None else (lambda: False)
    before = len(cache.replies)
    progress = GenerationProgress(len(todo), what, prices=prices(cfg))

    def on_reply(request: Request, reply: Reply) -> None:
        cache.add(request, reply)
        progress.advance(reply)

    try:
        with progress:
            if not stop():
                teacher.generate(todo, on_reply, stop)
    except ui.UserError as err:
        arrived = len(cache.replies) - before
        message = f"{err.message}; {arrived} of {len(todo)} {what} arrived and are kept in {cache.path}"
        if not getattr(err, "resumable", True):  # rerunning as is would fail the same way
            raise ui.UserError(message, hint=err.hint) from None
        raise ui.UserError(message, hint=f"{err.hint + '; then ' if err.hint else ''}finish with:  "
                                         f"{resume_command}") from None
    except KeyboardInterrupt:
        ui.warning(f"Interrupted; {len(cache.replies) - before} {what} kept in {cache.path}. "
                   f"Finish with:  {resume_command}")
        raise
    finally:
        progress.record_rate(cache.path.parent, teacher.identity)
    _check_cap(cfg, cache, requests, what, resume_command, stop)


def _check_cap(cfg, cache, requests, what, resume_command, stop) -> None:
    missing = len(cache.missing(requests))
    if missing and stop():
        cap = cfg.generation_token_budget
        message = (f"spend cap reached: {cache.tokens_spent:,} of generation_token_budget {cap:,} tokens "
                   f"used; {missing} of {len(requests)} {what} were not requested")
        if cfg.generation_on_budget == "stop":
            raise ui.UserError(message + f"; what arrived is kept in {cache.path}",
                               hint=f"raise generation_token_budget and finish with:  {resume_command}")
        ui.warning(message + "; training goes on with what arrived (generation_on_budget: train)")


def read_rate(directory: Path, identity: dict) -> dict | None:
    """{"tokens_out_per_s", "requests_per_s"} an earlier run measured for this teacher, or None."""
    try:
        rates = json.loads((Path(directory) / RATES_FILE).read_text())
    except (OSError, ValueError):
        return None
    rate = rates.get(json.dumps(identity, sort_keys=True)) if isinstance(rates, dict) else None
    return rate if isinstance(rate, dict) and rate.get("requests_per_s") else None


class GenerationProgress:
    """done/total, tokens in and out, time left, cost: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, what: str, interactive: bool | None = None,
                 prices: tuple[float, float] | None = None):
        self.total, self.what, self.prices = total, what, prices
        self.interactive = ui.is_interactive() if interactive is None else interactive
        self.done = self.tokens_in = self.tokens_out = 0
        self.started = time.perf_counter()
        self._bar = self._task = None
        self._next_line = 0

    def __enter__(self) -> "GenerationProgress":
        self.started = time.perf_counter()
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn(f"[bold]teacher {self.what}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), console=ui.console)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        else:
            ui.info(f"teacher {self.what}: {self.total} to request")
        return self

    def describe(self) -> str:
        from finetuner.summary import duration

        elapsed = max(time.perf_counter() - self.started, 1e-9)
        parts = [f"{self.tokens_in:,} tokens in, {self.tokens_out:,} out", f"{self.done / elapsed:.1f} requests/s"]
        if _MIN_TIMED <= self.done < self.total:  # projected from the replies so far
            parts.append(f"about {duration(elapsed * (self.total - self.done) / self.done)} left")
        if self.prices is not None:
            spent = cost(self.tokens_in, self.tokens_out, self.prices)
            projected = f", about {money(spent * self.total / self.done)} in all" \
                if _MIN_TIMED <= self.done < self.total else ""
            parts.append(f"{money(spent)} so far{projected}")
        return ", ".join(parts)

    def advance(self, reply: Reply) -> None:
        self.done += 1
        self.tokens_in += reply.prompt_tokens
        self.tokens_out += reply.completion_tokens
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=self.describe())
        elif self.done >= self._next_line or self.done == self.total:
            ui.info(f"teacher {self.what} {self.done}/{self.total}  {self.describe()}")
            self._next_line = self.done + max(1, self.total // 10)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def record_rate(self, directory: Path, identity: dict) -> None:
        """Keep this run's measured rate for the next plan's estimate (enough replies only)."""
        if self.done < _MIN_TIMED:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        path = Path(directory) / RATES_FILE
        try:
            rates = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            rates = {}
        rates[json.dumps(identity, sort_keys=True)] = {
            "requests_per_s": self.done / elapsed, "tokens_out_per_s": self.tokens_out / elapsed,
            "tokens_out_per_request": self.tokens_out / self.done}
        try:
            artifacts.write_text_atomic(path, json.dumps(rates, indent=1))
        except OSError:
            pass  # an estimate for next time is not worth failing this run
