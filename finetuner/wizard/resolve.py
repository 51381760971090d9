"""One loop resolves every answer, whether it comes from a file, `--set`, a prompt or a default.

Resolution order per question: skip if it doesn't apply -> value given -> ask (on a terminal)
-> default (`--defaults` or advanced settings) -> report as missing.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from finetuner import ui
from finetuner.config import FIELD_NAMES, applies, coerce, default_for
from finetuner.config_checks import check_field, cross_check
from finetuner.sources import check_model, hub_offline
from finetuner.wizard.checks import problem_at_question
from finetuner.wizard.questions import HUB_TOKEN, QUESTIONS, Answers, Question

Check = Callable[[Any], "str | None"]
Ask = Callable[[Question, Any, Answers], Any]


# ---- validation -----------------------------------------------------------------------------

_MODEL_KEYS = ("model", "teacher", "student")
# Settings asked after every field their cross-field rule reads, so the rule can be checked at the
# question (the others wait for the end: a later answer may still satisfy them).
_COMPLETES_A_RULE = ("student_layers", "adalora_target_r", "hub_repo")


def accept(question: Question, raw: Any, answers: Answers, checks: dict[str, Check]) -> tuple[Any, str | None]:
    """Type and validate one answer: the same path for typed, file and --set answers."""
    if question.secret:
        return (raw, None) if isinstance(raw, str) and raw.strip() else (None, "must not be empty")
    try:
        value = coerce(question.key, raw)
    except ValueError as exc:
        return None, str(exc)
    problem = check_field(question.key, value)
    # A teacher behind an API is a model name at that endpoint, not something to find locally.
    api_teacher = question.key == "teacher" and answers.get("teacher_api_base")
    # A check in `checks` may replace this one (a teacher whose complete cache stands in for it).
    if problem is None and question.key in _MODEL_KEYS and not api_teacher and question.key not in checks:
        problem = check_model(value)
    if problem is None and question.key == "upload" and value and hub_offline():
        problem = ("HF_HUB_OFFLINE is set, so the upload would fail after training; answer no and upload "
                   "later with --upload-only OUTPUT_DIR, or unset HF_HUB_OFFLINE")
    if problem is None:
        problem = problem_at_question(question.key, value, answers)
    if problem is None and question.key in _COMPLETES_A_RULE:  # a rule spanning fields, checked at once
        prefix = f"{question.key}:"
        problem = next((p[len(prefix):].strip() for p in cross_check({**answers, question.key: value})
                        if p.startswith(prefix)), None)
    if problem is None and question.key in checks:
        problem = checks[question.key](value)
    return value, problem


# Short names people type for a setting, which difflib finds too far from the full name.
_ALIASES = {"lr": "learning_rate", "bs": "batch_size", "grad_accum": "gradient_accumulation",
            "steps": "max_steps", "samples": "max_samples", "model_name": "model", "data": "dataset",
            "out": "output_dir", "output": "output_dir", "r": "lora_r", "rank": "lora_r"}


def _did_you_mean(key: str) -> str:
    close = [_ALIASES[key.lower()]] if key.lower() in _ALIASES else difflib.get_close_matches(key, FIELD_NAMES, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- the loop -------------------------------------------------------------------------------

def resolve(given: Answers, ask: Ask | None, use_defaults: bool = False,
            checks: dict[str, Check] | None = None, token_found: Callable[[], bool] = lambda: True,
            previous: Answers | None = None, from_set: frozenset[str] = frozenset()) -> tuple[Answers, Answers]:
    """Resolve every setting. Returns (answers, secrets).

    `previous` (a former run's answers, or the answers file's value of a key `--set` overrides)
    replaces the defaults offered at the prompts. `from_set`: the keys `--set` gave, named as such.

    `ask` is None when there is no terminal: then every missing or invalid key is
    collected and reported at once in a single UserError.
    """
    checks = checks or {}
    problems = [f"{k}: unknown setting{_did_you_mean(k)}" for k in given
                if k not in FIELD_NAMES and k != HUB_TOKEN.key]
    if problems and ask is not None:  # before any question: answering them would be thrown away
        raise ui.UserError(f"the answers name {_count(problems, 'unknown setting')}",
                           hint="fix the key in the answers file or --set, then run again", details=problems)
    pass_ = _Pass(ask, use_defaults, checks, problems, previous or {}, from_set)
    answers = pass_.run(given, notes=True)

    if ask is None:
        flagged = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in cross_check(answers) if p.split(":", 1)[0] not in flagged]
    else:
        answers = _reask_cross_problems(answers, pass_)

    secrets: Answers = {}
    if answers.get("upload") and not token_found():
        if HUB_TOKEN.key in given:
            secrets[HUB_TOKEN.key] = given[HUB_TOKEN.key]
        elif ask is not None:
            secrets[HUB_TOKEN.key] = _prompt_until_valid(HUB_TOKEN, answers, ask, checks)
        else:
            problems.append("upload: no Hugging Face token found; set HF_TOKEN or run `hf auth login`")

    if problems:
        raise ui.UserError(f"{_count(problems, 'setting')} {'needs' if len(problems) == 1 else 'need'} fixing",
                           hint="fix them in the answers file or with --set KEY=VALUE "
                                "(--defaults takes the default for anything missing)",
                           details=problems)
    for key in sorted(k for k in from_set if k in FIELD_NAMES and k not in answers):
        ui.warning(f"--set {key}: does not apply to this run ({_why_not(key, answers)}), so it is ignored")
    return answers, secrets


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _why_not(key: str, answers: Answers) -> str:
    if answers.get("approach") == "fine-tuning" and applies(key, {**answers, "approach": "distillation"}):
        return "it is a distillation setting, and this run fine-tunes"
    return "the other answers leave it out"


class _Pass:
    """One pass over the questions, in order: what each question that applies resolves to."""

    def __init__(self, ask: Ask | None, use_defaults: bool, checks: dict[str, Check], problems: list[str],
                 previous: Answers, from_set: frozenset[str]):
        self.ask, self.use_defaults, self.checks = ask, use_defaults, checks
        self.problems, self.previous, self.from_set = problems, previous, from_set

    def run(self, given: Answers, notes: bool = False) -> Answers:
        answers: Answers = {}
        for question in QUESTIONS:
            if not question.applies(answers):
                if notes and self.ask is not None and question.skip_note and applies(question.key, {}):
                    ui.info(question.skip_note)
                continue
            answers[question.key] = _resolve_one(question, given, answers, self)
        return answers


def _resolve_one(question: Question, given: Answers, answers: Answers, pass_: _Pass) -> Any:
    ask, checks, problems, previous = pass_.ask, pass_.checks, pass_.problems, pass_.previous
    default = question.default_value(answers)
    if question.key in given:
        value, problem = accept(question, given[question.key], answers, checks)
        if problem is None:
            return value
        if ask is None or not question.ask:
            problems.append(f"{question.key}: {problem}")
            return default  # keep going so every other problem is reported too
        origin = "--set" if question.key in pass_.from_set else "the answers"
        ui.warning(f"{question.key} = {given[question.key]!r} from {origin}: {problem}")
    elif not question.ask or pass_.use_defaults:
        value, problem = accept(question, default, answers, checks) if default is not None else (None, None)
        if problem is None:
            return default
        if ask is None:
            problems.append(f"{question.key}: default {default!r} {problem}")
            return default
    elif ask is None and question.optional_in_files:
        return default_for(question.key, answers)  # an older answers file replays as it did
    elif ask is None:
        problems.append(f"{question.key}: missing (default would be {default!r})")
        return default
    offered = previous[question.key] if question.key in previous else None
    if offered is not None and accept(question, offered, answers, {})[1] is not None:
        offered = None  # a previous answer that no longer fits (another model's layer count...)
    return _prompt_until_valid(question, answers, ask, checks, offered)


def _prompt_until_valid(question: Question, answers: Answers, ask: Ask, checks: dict[str, Check],
                        offered: Any = None) -> Any:
    while True:
        raw = ask(question, question.default_value(answers) if offered is None else offered, answers)
        value, problem = accept(question, raw, answers, checks)
        if problem is None:
            return value
        ui.warning(f"{question.key}: {problem}")


def _reask_cross_problems(answers: Answers, pass_: _Pass) -> Answers:
    """A rule that spans settings, broken once all are answered: its setting is asked again, then
    every question the new answer opens (an API teacher's mode changed to responses opens the
    generation questions), while the answers given so far stand."""
    for _ in range(5):
        problems = cross_check(answers)
        if not problems:
            break
        key, message = problems[0].split(":", 1)
        ui.warning(f"{key}:{message}")
        question = next(q for q in QUESTIONS if q.key == key)
        changed = {**answers, key: _prompt_until_valid(question, answers, pass_.ask, pass_.checks)}
        answers = pass_.run(changed)
    return answers
