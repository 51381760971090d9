"""What the plan says about a teacher that writes, before "Start?": the endpoint's preflight, and the
requests, tokens, time and cost generation will take.

Tokens in are counted with the student's tokenizer (the teacher's may differ a little); tokens out
are at most generation_max_new_tokens a request, or the average an earlier run with this teacher
measured. Time comes from the rate an earlier run measured with this teacher (teacher_rates.json
beside the response cache): tokens out per second for a local teacher, requests per second for an
API. Without one, the live progress line projects it from the first replies.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.teachers.generate import answer_request, open_cache, open_teacher, unique_questions
from finetuner.teachers.preflight import FIRST_REPLY_TIMEOUT, check_endpoint
from finetuner.teachers.questions import parse_questions, question_request
from finetuner.teachers.spend import cost, money, prices
from finetuner.teachers.writing import read_rate

_SYSTEM_TOKENS = 80  # the grounded-answer system prompt and the chat template's own tokens


def check_teacher_endpoint(cfg: RunConfig, warn_only: bool = False) -> None:
    """One cheap request to an API teacher: a wrong model, a missing /v1 or key, a dead or hung host
    stop here, as one line, before "Start?". A dry run (`warn_only`, the server may not be up yet)
    and a run with responses already cached only warn: a run that needs nothing new (say, training
    elsewhere after --generate-only) does not need the server."""
    if not (cfg.teacher_writes and cfg.teacher_api_base):
        return
    timeout = min(FIRST_REPLY_TIMEOUT, cfg.generation_timeout)
    ui.step(f"Checking the teacher endpoint {cfg.teacher_api_base} (one request; first-reply timeout {timeout:g} s)")
    problem = check_endpoint(cfg.teacher_api_base, cfg.teacher, cfg.teacher_api_key_env, timeout=timeout)
    if problem is None:
        return
    if warn_only:
        ui.warning(f"{problem.message} ({problem.hint})")
        return
    cached = len(open_cache(cfg, open_teacher(cfg).identity).replies)
    if not cached:
        raise problem
    ui.warning(f"{problem.message}; going on with the {cached} cached responses (a missing one will fail)")


@dataclass
class Needed:
    requests: int
    cached: int
    tokens_in: int  # of the requests still to send
    tokens_out: int  # at most (or, measured before, about) for the requests still to send
    measured: bool  # tokens_out is an earlier run's average, not the bound


def plan_rows(cfg: RunConfig, pre) -> list[tuple[str, str]]:
    """(label, value) rows for the plan: requests, tokens, time and cost of generation."""
    if not cfg.teacher_writes:
        return []
    need = needed(cfg, pre)
    about = "about" if need.measured else "at most"
    rows = [("teacher requests", f"{need.requests} ({need.cached} already cached): about {need.tokens_in:,} tokens in, "
                                 f"{about} {need.tokens_out:,} out to request (counted with the student's tokenizer)")]
    if (price := prices(cfg)) is not None:
        rows.append(("estimated generation cost", f"{about} {money(cost(need.tokens_in, need.tokens_out, price))} "
                                                  f"({price[0]:g} in, {price[1]:g} out per million tokens)"))
    return rows


def needed(cfg: RunConfig, pre) -> Needed:
    """The requests generation makes, how many are cached already, and their tokens."""
    teacher = open_teacher(cfg)
    cache = open_cache(cfg, teacher.identity)
    rate = read_rate(cache.path.parent, teacher.identity)
    return _documents(cfg, pre.tokenizer, cache, rate) if pre.data is None else _prompts(cfg, pre, cache, rate)


def earlier_rate(cfg: RunConfig) -> dict | None:
    """The rate an earlier run measured with this teacher (teacher_rates.json beside its responses), or None."""
    teacher = open_teacher(cfg)
    return read_rate(open_cache(cfg, teacher.identity).path.parent, teacher.identity)


def _out_per_request(cfg: RunConfig, rate: dict | None) -> tuple[int, bool]:
    if rate and rate.get("tokens_out_per_request"):
        return min(cfg.generation_max_new_tokens, round(rate["tokens_out_per_request"])), True
    return cfg.generation_max_new_tokens, False


def _prompts(cfg: RunConfig, pre, cache, rate) -> Needed:
    examples = pre.data.examples
    requests = [answer_request(e, cfg) for e in examples]
    todo = cache.missing(requests)
    out, measured = _out_per_request(cfg, rate)
    tokens_in = sum(_tokens(pre.tokenizer, r.messages) for r in todo)
    return Needed(len(requests), len(requests) - len(todo), tokens_in, out * len(todo), measured)


def _documents(cfg: RunConfig, tokenizer, cache, rate) -> Needed:
    from finetuner.teachers.documents import grounded_request, read_chunks

    chunks = read_chunks(cfg.dataset, tokenizer, cfg.chunk_tokens)
    asks = [question_request(text, cfg.questions_per_chunk) for _, text in chunks]
    todo = cache.missing(asks)
    out, measured = _out_per_request(cfg, rate)
    tokens_in = sum(_tokens(tokenizer, a.messages) for a in todo)
    if todo:  # questions still unwritten: answers at most questions_per_chunk per chunk
        chunk_tokens = sum(_tokens(tokenizer, a.messages) for a in asks) / max(len(asks), 1)
        answers = min(len(chunks) * cfg.questions_per_chunk, cfg.max_samples)
        tokens_in += round(answers * (chunk_tokens + _SYSTEM_TOKENS))
        return Needed(len(asks) + answers, len(asks) - len(todo), tokens_in, out * (len(todo) + answers), measured)
    per_chunk = [parse_questions(cache.replies[a.key].text, cfg.questions_per_chunk) for a in asks]
    questions = unique_questions(chunks, per_chunk, cfg.max_samples)
    answers = cache.missing([grounded_request(q, text, cfg.generation_system_prompt) for q, (_, text) in questions])
    tokens_in = sum(_tokens(tokenizer, a.messages) + _SYSTEM_TOKENS for a in answers)
    total = len(asks) + len(questions)
    return Needed(total, total - len(answers), tokens_in, out * len(answers), measured)


def _tokens(tokenizer, messages) -> int:
    return sum(len(tokenizer(content, add_special_tokens=False)["input_ids"]) for _, content in messages)
