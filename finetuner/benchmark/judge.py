"""An LLM judge behind an OpenAI-compatible endpoint grades every benchmarked answer on the rubric.

The judge is an API teacher pointed elsewhere: the same client, concurrency (generation_concurrency),
retries and timeout (generation_max_retries, generation_timeout), and a spend cap of its own
(judge_token_budget). The key is read from the variable named by judge_api_key_env and handed to
the client only. Each judgement is appended to OUT/judgements.jsonl as it arrives (the response
cache's format, keyed by exactly what the judge was sent), so a rerun or `--benchmark-only` asks
only for what is missing. A judge that fails (unreachable, 401, 404, ...) costs its scores, never
the rest of the benchmark: one line says why and how to retry.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetuner import ui
from finetuner.benchmark import rubric
from finetuner.benchmark.uncertainty import mean_interval
from finetuner.teachers.api import ApiTeacher, MalformedReply, parse_completion
from finetuner.teachers.response_cache import Reply, Request, ResponseCache

JUDGE_FILE = "judgements.jsonl"
MAX_TOKENS = 96  # a score line and one sentence


class ApiJudge(ApiTeacher):
    """ApiTeacher's concurrency, retries and spend-cap stop, asking the judge model instead."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.identity = {"model": cfg.judge_model, "api_base": cfg.judge_api_base}
        self.key_variable = cfg.judge_api_key_env  # the client is ApiTeacher's, pointed at the judge

    async def _ask(self, client, request: Request) -> Reply:
        completion = await client.chat.completions.create(model=self.cfg.judge_model, messages=request.as_messages(),
                                                          max_tokens=MAX_TOKENS, temperature=0)
        return parse_completion(completion)

    def _user_error(self, exc: BaseException) -> BaseException:
        """One line naming the judge's fault; anything unrecognised stays a bug."""
        import openai

        cfg, base = self.cfg, self.cfg.judge_api_base
        if isinstance(exc, ui.UserError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return ui.UserError(f"the judge at {base} did not answer within {cfg.generation_timeout:g} s")
        if isinstance(exc, openai.APIConnectionError):
            return ui.UserError(f"can't reach the judge endpoint {base}")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return ui.UserError(f"the judge endpoint {base} refused the API key ({exc.status_code}); put a valid "
                                f"key in the environment variable {cfg.judge_api_key_env}")
        if isinstance(exc, openai.NotFoundError):
            return ui.UserError(f"model {cfg.judge_model!r} is not served at {base} (404); set judge_model to one "
                                f"listed at {base.rstrip('/')}/models")
        if isinstance(exc, openai.APIStatusError):
            return ui.UserError(f"the judge endpoint {base} answered {exc.status_code}")
        if isinstance(exc, (MalformedReply, openai.APIResponseValidationError, json.JSONDecodeError)):
            return ui.UserError(f"the judge endpoint {base} sent a reply that is not a chat completion")
        return exc


def context_of(row: dict) -> str | None:
    """The source text a document-generated row was written from, when the held-out row keeps it."""
    for key in ("chunk", "context", "source"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    return None


def judge(cfg, out_dir: str | Path, results: list, heldout: list[dict], advance=lambda n=1: None) -> dict:
    """Grade every result's answers (result.samples), filling result.judge and each sample's "judge";
    returns the report's "judge" block. Never raises for the judge's own faults."""
    cache = ResponseCache(Path(out_dir) / JUDGE_FILE, {"model": cfg.judge_model, "api_base": cfg.judge_api_base},
                          {"rubric": rubric.RUBRIC_VERSION, "max_tokens": MAX_TOKENS})
    cache._read()  # the cache file under another name: same format, same resume
    asks = [[Request("judge", sample["prompt"], rubric.messages(row.get("prompt", sample["prompt"]),
                                                                 sample["reference"], sample["generation"],
                                                                 context_of(row)))
             for sample, row in zip(result.samples, heldout)] for result in results]
    todo = cache.missing([a for row in asks for a in row])
    advance(sum(len(row) for row in asks) - len(todo))
    status = _ask_all(cfg, cache, todo, advance, out_dir)
    unscored = missing = 0
    for result, row in zip(results, asks):
        scores = []
        for sample, request in zip(result.samples, row):
            reply = cache.replies.get(request.key)
            score, reason = rubric.read_reply(reply.text) if reply is not None else (None, "not judged")
            sample["judge"] = {"score": score, "reason": reason}
            scores += [score] if score is not None else []
            unscored += reply is not None and score is None
            missing += reply is None
        mean, low, high = mean_interval(scores) if scores else (None, None, None)
        result.judge = {"mean": _round(mean), "low": _round(low), "high": _round(high), "scored": len(scores),
                        "unscored": sum(s["judge"]["score"] is None for s in result.samples)}
    if unscored:
        ui.warning(f"judge: {unscored} replies were off-rubric (no score from 1 to 5) and are left unscored, "
                   f"not counted as 0; read them in {cache.path}")
    return {"model": cfg.judge_model, "api_base": cfg.judge_api_base, "rubric": rubric.RUBRIC,
            "rubric_version": rubric.RUBRIC_VERSION, "status": status, "unscored": unscored, "missing": missing,
            "tokens": cache.tokens_spent, "file": JUDGE_FILE}


def _ask_all(cfg, cache: ResponseCache, todo: list[Request], advance, out_dir) -> str:
    """Ask for every missing judgement; "ok", or the one line that says why not all arrived."""
    cap = cfg.judge_token_budget
    stop = (lambda: cache.tokens_spent >= cap) if cap is not None else (lambda: False)
    retry = f"retry the judging alone with:  python finetune_cli.py --benchmark-only {out_dir}"

    def on_reply(request: Request, reply: Reply) -> None:
        cache.add(request, reply)
        advance()

    before = len(cache.replies)
    try:
        if todo and not stop():
            ApiJudge(cfg).generate(todo, on_reply, stop)
    except ui.UserError as err:
        line = (f"judge: {err.message}; {len(cache.replies) - before} of {len(todo)} judgements arrived and are "
                f"kept in {cache.path}; the rest of the benchmark is kept; {retry}")
        ui.warning(line)
        return line
    left = len(cache.missing(todo))
    if left:
        line = (f"judge: spend cap reached ({cache.tokens_spent:,} of judge_token_budget {cap:,} tokens); {left} "
                f"answers were not judged; raise judge_token_budget and {retry}")
        ui.warning(line)
        return line
    return "ok"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def check_judge_endpoint(cfg, warn_only: bool = False) -> None:
    """One request to the judge before "Start?": a wrong judge model, URL or key is said now, as one
    line, not after training (a dry run, whose judge may not be up yet, only warns)."""
    from finetuner.config import applies
    from finetuner.teachers.preflight import FIRST_REPLY_TIMEOUT, check_endpoint

    if not (cfg.judge_api_base and applies("judge_api_base", cfg)):
        return
    timeout = min(FIRST_REPLY_TIMEOUT, cfg.generation_timeout)
    ui.step(f"Checking the judge endpoint {cfg.judge_api_base} (one request; first-reply timeout {timeout:g} s)")
    problem = check_endpoint(cfg.judge_api_base, cfg.judge_model, cfg.judge_api_key_env, setting="judge",
                             timeout=timeout)
    if problem is not None and warn_only:
        ui.warning(f"{problem.message} ({problem.hint})")
    elif problem is not None:
        raise problem
