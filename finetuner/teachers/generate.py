"""The "generate" stage: the teacher writes the responses a student trains on (distillation_mode
responses / hybrid), through the resumable cache, with a live progress line and a spend cap.

For a dataset of prompts, the teacher answers every training and held-out prompt of the run's split;
for documents (questions_per_chunk > 0), it first writes questions about each chunk, then answers
them. The stage returns `WrittenResponses`, which the trainer's data preparation applies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from finetuner import artifacts, ui
from finetuner.config import RunConfig
from finetuner.teachers.response_cache import CACHE_FILE, ResponseCache, Reply, Request

TEACHER_HELDOUT_FILE = "teacher_heldout.jsonl"  # {"prompt", "response"} per held-out row (seam with the benchmark)
DOCUMENT_QA_FILE = "document_qa.jsonl"  # {"question", "answer"}: what the student learns from documents


@dataclass
class WrittenResponses:
    """What training takes from the teacher: a dataset of its own (documents), or a rewrite of each
    training example's response (None drops the example)."""
    dataset: str | None
    rewrite: Callable[[dict], dict | None] | None
    kept: int
    dropped: int
    # The local teacher's weights, when hybrid loaded them to write: its logits term reuses them
    # instead of loading the teacher a second time. None otherwise (responses mode frees them).
    model: Any = None


def _for_logits(cfg: RunConfig, teacher):
    """The weights a local teacher loaded to write, kept for hybrid's logits when they are what it
    would load (a quantised teacher_quantization loads differently)."""
    if cfg.distillation_mode != "hybrid" or cfg.teacher_quantization:
        return None
    return getattr(teacher, "loaded_model", None)


def open_teacher(cfg: RunConfig):
    if cfg.teacher_api_base:
        from finetuner.teachers.api import ApiTeacher

        return ApiTeacher(cfg)
    from finetuner.teachers.local import LocalTeacher

    return LocalTeacher(cfg)


def settings_of(cfg: RunConfig) -> dict:
    """The settings a response depends on; a cached response is reused only under the same ones."""
    return {"max_new_tokens": cfg.generation_max_new_tokens, "temperature": cfg.generation_temperature,
            "top_p": cfg.generation_top_p, "system_prompt": cfg.generation_system_prompt}


def answer_request(example: dict, cfg: RunConfig) -> Request:
    """The chat request that asks the teacher for an example's response."""
    turns = [(m["role"], m["content"]) for m in example.get("messages", [])] or [("user", example["prompt"])]
    if cfg.generation_system_prompt and turns[0][0] != "system":
        turns.insert(0, ("system", cfg.generation_system_prompt))
    return Request("answer", example["prompt"], tuple(turns))


def usable(reply: Reply | None, cfg: RunConfig) -> bool:
    if reply is None or not reply.text.strip():
        return False
    return not (cfg.generation_drop_incomplete and reply.finish_reason == "length")


# ---- the stage ------------------------------------------------------------------------------

def write_for(cfg: RunConfig, resume_command: str) -> WrittenResponses:
    """The stage as the recipe runs it: the student's tokenizer decides the split."""
    from finetuner import models

    ui.step(f"The teacher ({cfg.teacher}) writes the responses")
    return generate_stage(cfg, models.load_tokenizer(cfg.student), resume_command)


def generate_stage(cfg: RunConfig, student_tokenizer, resume_command: str) -> WrittenResponses:
    out = Path(cfg.output_dir)
    teacher = open_teacher(cfg)
    cache = ResponseCache.open(out, teacher.identity, settings_of(cfg))
    if cache.replies:
        ui.info(f"{len(cache.replies)} responses from {cfg.teacher} with these settings are already in "
                f"{cache.path}; only the missing ones are requested")
    if cfg.questions_per_chunk:
        return _from_documents(cfg, teacher, cache, student_tokenizer, resume_command)
    return _from_prompts(cfg, teacher, cache, student_tokenizer, resume_command)


def _from_prompts(cfg, teacher, cache, tokenizer, resume_command) -> WrittenResponses:
    from finetuner.data.preparing import split

    parts = split(cfg, tokenizer)
    train = [answer_request(e["example"], cfg) for e in parts.train]
    held = [answer_request(e["example"], cfg) for e in parts.heldout]
    write_responses(cfg, teacher, cache, train + held, resume_command)
    kept = [r for r in train if usable(cache.replies.get(r.key), cfg)]
    _report_kept(cfg, len(kept), len(train), cache)
    _write_teacher_heldout(cfg, teacher, cache, [e["example"]["prompt"] for e in parts.heldout], held)

    def rewrite(example: dict) -> dict | None:
        reply = cache.replies.get(answer_request(example, cfg).key)
        if not usable(reply, cfg):
            return None
        return {**{k: v for k, v in example.items() if k != "response"}, "response": reply.text.strip()}

    show_samples([(r.prompt, cache.replies[r.key].text) for r in kept])
    return WrittenResponses(None, rewrite, len(kept), len(train) - len(kept), model=_for_logits(cfg, teacher))


def _from_documents(cfg, teacher, cache, tokenizer, resume_command) -> WrittenResponses:
    from finetuner.teachers.documents import QUESTION_PROMPT, chunk_text, parse_questions, read_documents

    chunks = [c for _, text in read_documents(cfg.dataset) for c in chunk_text(text, tokenizer, cfg.chunk_tokens)]
    ui.info(f"{len(chunks)} document chunks of up to {cfg.chunk_tokens} tokens; "
            f"{cfg.questions_per_chunk} questions each")
    asks = [Request("questions", chunk, (("user", QUESTION_PROMPT.format(n=cfg.questions_per_chunk, chunk=chunk)),))
            for chunk in chunks]
    write_responses(cfg, teacher, cache, asks, resume_command, what="questions")
    questions = [q for a in asks if a.key in cache.replies
                 for q in parse_questions(cache.replies[a.key].text, cfg.questions_per_chunk)]
    questions = list(dict.fromkeys(questions))[:cfg.max_samples]
    if not questions:
        raise ui.UserError(f"the teacher wrote no usable questions about {cfg.dataset}",
                           hint=f"read its replies in {cache.path}; a stronger teacher or larger chunk_tokens helps")
    answers = [answer_request({"prompt": q}, cfg) for q in questions]
    write_responses(cfg, teacher, cache, answers, resume_command, what="answers")
    pairs = [{"question": r.prompt, "answer": cache.replies[r.key].text.strip()}
             for r in answers if usable(cache.replies.get(r.key), cfg)]
    _report_kept(cfg, len(pairs), len(answers), cache)
    if not pairs:
        raise ui.UserError("no question got a usable answer from the teacher",
                           hint=f"read the replies in {cache.path}; raise generation_max_new_tokens")
    path = artifacts.write_text_atomic(Path(cfg.output_dir) / DOCUMENT_QA_FILE,
                                       "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    ui.info(f"{len(pairs)} question/answer pairs written to {path}")
    if cfg.teacher_api_base:  # the held-out references are the teacher's own answers
        artifacts.write_text_atomic(Path(cfg.output_dir) / TEACHER_HELDOUT_FILE, "".join(
            json.dumps({"prompt": p["question"], "response": p["answer"]}, ensure_ascii=False) + "\n"
            for p in pairs))
    show_samples([(p["question"], p["answer"]) for p in pairs])
    return WrittenResponses(str(path), None, len(pairs), len(answers) - len(pairs), model=_for_logits(cfg, teacher))


def _report_kept(cfg: RunConfig, kept: int, total: int, cache: ResponseCache) -> None:
    if kept < total:
        why = "empty, cut off at the length limit or not written" if cfg.generation_drop_incomplete \
            else "empty or not written"
        ui.warning(f"{total - kept} of {total} training responses left out ({why}); see {cache.path}")


def _write_teacher_heldout(cfg, teacher, cache, prompts: list[str], held: list[Request]) -> None:
    """The teacher's answers to the held-out prompts, so the benchmark can score an API teacher (no
    weights) and compare the student with it (fidelity)."""
    if not cfg.teacher_api_base:
        return
    rows = [{"prompt": p, "response": cache.replies[r.key].text.strip() if r.key in cache.replies else ""}
            for p, r in zip(prompts, held)]
    artifacts.write_text_atomic(Path(cfg.output_dir) / TEACHER_HELDOUT_FILE,
                                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def show_samples(pairs: list[tuple[str, str]], count: int = 3) -> None:
    """A few of the teacher's responses, to read before training on them."""
    if not pairs:
        return
    ui.step(f"{min(count, len(pairs))} of the teacher's responses (all are in {CACHE_FILE})")
    for prompt, response in pairs[:count]:
        ui.info(f"  prompt:   {_one_line(prompt)}")
        ui.info(f"  response: {_one_line(response)}")


def _one_line(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


# ---- generating, with progress, spend cap and faults --------------------------------------

def write_responses(cfg: RunConfig, teacher, cache: ResponseCache, requests: list[Request],
                    resume_command: str, what: str = "responses") -> None:
    """Ask the teacher for every request the cache lacks; each reply is cached as it arrives."""
    todo = cache.missing(requests)
    if not todo:
        return
    cap = cfg.generation_token_budget
    stop = (lambda: cache.tokens_spent >= cap) if cap is not None else (lambda: False)
    before = len(cache.replies)
    progress = GenerationProgress(len(todo), what)

    def on_reply(request: Request, reply: Reply) -> None:
        cache.add(request, reply)
        progress.advance(reply)

    try:
        with progress:
            if not stop():
                teacher.generate(todo, on_reply, stop)
    except ui.UserError as err:
        arrived = len(cache.replies) - before
        raise ui.UserError(f"{err.message}; {arrived} of {len(todo)} {what} arrived and are kept in {cache.path}",
                           hint=f"{err.hint + '; then ' if err.hint else ''}finish with:  {resume_command}") from None
    except KeyboardInterrupt:
        ui.warning(f"Interrupted; {len(cache.replies) - before} {what} kept in {cache.path}. "
                   f"Finish with:  {resume_command}")
        raise
    missing = len(cache.missing(requests))
    if missing and stop():
        message = (f"spend cap reached: {cache.tokens_spent:,} of generation_token_budget {cap:,} tokens "
                   f"used; {missing} of {len(requests)} {what} were not requested")
        if cfg.generation_on_budget == "stop":
            raise ui.UserError(message + f"; what arrived is kept in {cache.path}",
                               hint=f"raise generation_token_budget and finish with:  {resume_command}")
        ui.warning(message + "; training goes on with what arrived (generation_on_budget: train)")


class GenerationProgress:
    """done/total, tokens in and out, requests/s: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, what: str, interactive: bool | None = None):
        self.total, self.what = total, what
        self.interactive = ui.is_interactive() if interactive is None else interactive
        self.done = self.tokens_in = self.tokens_out = 0
        self.started = time.perf_counter()
        self._bar = self._task = None
        self._next_line = 0

    def __enter__(self) -> "GenerationProgress":
        self.started = time.perf_counter()
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"[bold]teacher {self.what}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.description}"), console=ui.console)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        else:
            ui.info(f"teacher {self.what}: {self.total} to request")
        return self

    def describe(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return (f"{self.tokens_in:,} tokens in, {self.tokens_out:,} out, "
                f"{self.done / elapsed:.1f} requests/s")

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
