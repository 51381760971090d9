"""The "generate" stage: the teacher writes the responses a student trains on (distillation_mode
responses / hybrid), through the resumable cache (writing.py: progress, spend cap, faults).

For a dataset of prompts, the teacher answers every training and held-out prompt of the run's split;
for documents (questions_per_chunk > 0), it first writes questions about each chunk (questions.py),
then answers each from its chunk (documents.py). The filters and the summary the user reads
(outcome.py) decide what is kept; the stage returns `WrittenResponses`, which the trainer's data
preparation applies.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from finetuner import artifacts, ui
from finetuner.config import RunConfig
from finetuner.teachers.outcome import check_enough, record, show, show_spend, sort_out
from finetuner.teachers.spend import spend
from finetuner.teachers.questions import parse_questions, question_request
from finetuner.teachers.response_cache import ResponseCache, Request
from finetuner.teachers.writing import write_responses

# {"prompt", "response"} per held-out row (+ "context", the chunk, for documents): the seam with the benchmark
TEACHER_HELDOUT_FILE = "teacher_heldout.jsonl"
# {"question", "answer", "context", "source"}: what the student learns from documents, and the chunk
# (and its file) each pair came from, so a judge can score the answer's faithfulness to it
DOCUMENT_QA_FILE = "document_qa.jsonl"


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
    cache_path: Path | None = None  # where the responses are, to read or edit


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


# ---- the stage ------------------------------------------------------------------------------

def write_for(cfg: RunConfig, resume_command: str) -> WrittenResponses:
    """The stage as the recipe runs it: the student's tokenizer decides the split."""
    from finetuner import models

    ui.step(f"The teacher ({cfg.teacher}) writes the responses")
    return generate_stage(cfg, models.load_tokenizer(cfg.student), resume_command)


def open_cache(cfg: RunConfig, identity: dict) -> ResponseCache:
    """The response cache: in output_dir, or the generation_cache directory shared across runs."""
    return ResponseCache.open(Path(cfg.generation_cache or cfg.output_dir).expanduser(), identity, settings_of(cfg))


def generate_stage(cfg: RunConfig, student_tokenizer, resume_command: str) -> WrittenResponses:
    teacher = open_teacher(cfg)
    cache = open_cache(cfg, teacher.identity)
    if cache.replies:
        ui.info(f"{len(cache.replies)} responses from {cfg.teacher} with these settings are already in "
                f"{cache.path}; only the missing ones are requested")
    started = time.perf_counter()
    make = _from_documents if cfg.questions_per_chunk else _from_prompts
    written, outcome, used = make(cfg, teacher, cache, student_tokenizer, resume_command)
    show(outcome, cfg, cache.path)
    figures = spend(cfg, [cache.replies[k] for k in used if k in cache.replies], cache.added,
                    time.perf_counter() - started)
    show_spend(figures)
    record(cfg.output_dir, cfg, outcome, figures)
    check_enough(outcome, cfg, cache.path, resume_command)
    written.model = _for_logits(cfg, teacher)
    written.cache_path = cache.path
    return written


def _from_prompts(cfg, teacher, cache, tokenizer, resume_command):
    from finetuner.data.preparing import split

    parts = split(cfg, tokenizer)
    train = [answer_request(e["example"], cfg) for e in parts.train]
    held = [answer_request(e["example"], cfg) for e in parts.heldout]
    write_responses(cfg, teacher, cache, train + held, resume_command)
    rows = [(e["example"], cache.replies.get(r.key), e["example"].get("response")) for e, r in zip(parts.train, train)]
    outcome = sort_out(cfg, tokenizer, rows, "responses")
    kept = {r.key for r, reason in zip(train, outcome.reasons) if reason is None}
    _write_teacher_heldout(cfg, cache, [e["example"]["prompt"] for e in parts.heldout], held)

    def rewrite(example: dict) -> dict | None:
        request = answer_request(example, cfg)
        if request.key not in kept:
            return None
        return {**{k: v for k, v in example.items() if k != "response"}, "response": cache.replies[request.key].text.strip()}

    written = WrittenResponses(None, rewrite, outcome.kept, outcome.total - outcome.kept)
    return written, outcome, [r.key for r in train + held]


def _from_documents(cfg, teacher, cache, tokenizer, resume_command):
    from finetuner.teachers.documents import grounded_request, read_chunks

    chunks = read_chunks(cfg.dataset, tokenizer, cfg.chunk_tokens)
    ui.info(f"{len(chunks)} document chunks of up to {cfg.chunk_tokens} tokens; "
            f"{cfg.questions_per_chunk} questions each")
    asks = [question_request(text, cfg.questions_per_chunk) for _, text in chunks]
    write_responses(cfg, teacher, cache, asks, resume_command, what="questions")
    per_chunk = [parse_questions(cache.replies[a.key].text, cfg.questions_per_chunk) if a.key in cache.replies else []
                 for a in asks]
    found = unique_questions(chunks, per_chunk, cfg.max_samples)
    show_question_counts(per_chunk, cfg.questions_per_chunk, len(found))
    if not found:
        raise ui.UserError(f"the teacher wrote no usable questions about {cfg.dataset}",
                           hint=f"read its replies in {cache.path}; a stronger teacher or larger chunk_tokens helps")
    answers = [grounded_request(q, text, cfg.generation_system_prompt) for q, (_, text) in found]
    write_responses(cfg, teacher, cache, answers, resume_command, what="answers")
    rows = [({"prompt": r.prompt}, cache.replies.get(r.key), None) for r in answers]
    outcome = sort_out(cfg, tokenizer, rows, "answers")
    pairs = [{"question": r.prompt, "answer": cache.replies[r.key].text.strip(), "context": text, "source": source}
             for r, (_, (source, text)), reason in zip(answers, found, outcome.reasons) if reason is None]
    path = artifacts.write_text_atomic(Path(cfg.output_dir) / DOCUMENT_QA_FILE,
                                       "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    if pairs:
        ui.info(f"{len(pairs)} question/answer pairs written to {path} (with the chunk each came from)")
    if cfg.teacher_api_base:  # the held-out references are the teacher's own answers
        artifacts.write_text_atomic(Path(cfg.output_dir) / TEACHER_HELDOUT_FILE, "".join(
            json.dumps({"prompt": p["question"], "response": p["answer"], "context": p["context"]},
                       ensure_ascii=False) + "\n" for p in pairs))
    written = WrittenResponses(str(path), None, len(pairs), len(answers) - len(pairs))
    return written, outcome, [r.key for r in asks + answers]


def unique_questions(chunks, per_chunk, limit: int) -> list[tuple[str, tuple[str, str]]]:
    """(question, (source, chunk)) in chunk order; a question two chunks share is asked once."""
    found, seen = [], set()
    for chunk, questions in zip(chunks, per_chunk):
        for question in questions:
            if question.casefold() not in seen:
                seen.add(question.casefold())
                found.append((question, chunk))
    return found[:limit]


def show_question_counts(per_chunk: list[list[str]], asked: int, used: int) -> None:
    """How many questions per chunk survived the parser: "3 in 5 chunks, 1 in 1, 0 in 2"."""
    counts = Counter(len(q) for q in per_chunk)
    spread = ", ".join(f"{n} in {c} chunk{'s' * (c > 1)}" if i == 0 else f"{n} in {c}"
                       for i, (n, c) in enumerate(sorted(counts.items(), reverse=True)))
    ui.info(f"Questions kept per chunk (asked for {asked}): {spread}; {used} questions to answer")


def _write_teacher_heldout(cfg, cache, prompts: list[str], held: list[Request]) -> None:
    """The teacher's answers to the held-out prompts, so the benchmark can score an API teacher (no
    weights) and compare the student with it (fidelity)."""
    if not cfg.teacher_api_base:
        return
    rows = [{"prompt": p, "response": cache.replies[r.key].text.strip() if r.key in cache.replies else ""}
            for p, r in zip(prompts, held)]
    artifacts.write_text_atomic(Path(cfg.output_dir) / TEACHER_HELDOUT_FILE,
                                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
