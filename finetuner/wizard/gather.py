"""From the command line's answers to a RunConfig: the answers file and `--set` first, the previous
run's answers as defaults, the terminal for the gaps, plus the checks only the command line knows
(may the output directory be written into? may a complete teacher cache stand in for the teacher?)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.wizard.answers import (ANSWERS_FILE, answers_path, find_previous_answers, load_answers,
                                      parse_overrides, previous_defaults)
from finetuner.wizard.prompts import ask, choose_setting
from finetuner.wizard.questions import HUB_TOKEN, Answers
from finetuner.wizard.resolve import Check, resolve


@dataclass(frozen=True)
class AnswerOptions:
    """What the command line says about the answers and the output directory."""
    answers_file: str | None = None  # --answers
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, as typed
    use_defaults: bool = False  # --defaults: take the default for anything unanswered
    overwrite: bool = False  # --overwrite: a non-empty output directory may be written into
    resume: bool = False  # --resume: the output directory holds the run to continue
    check_output_dir: bool = True  # whether this process checks the output directory at all


def gather(options: AnswerOptions) -> tuple[RunConfig, Answers]:
    """The RunConfig and the secrets (never saved) for this run."""
    from_file = load_answers(options.answers_file) if options.answers_file else {}
    overrides = parse_overrides(list(options.overrides))
    given = {**from_file, **overrides}
    previous = {}
    if ui.can_ask() and not options.answers_file and (found := find_previous_answers()):
        previous = previous_defaults(found)
        ui.info(f"The defaults are your previous answers, from {found} (Enter keeps them).")
    # A --set value that fails is asked again offering the file's value, not the default.
    previous |= {key: from_file[key] for key in overrides if key in from_file}
    return resolve_config(options, given, previous, from_set=frozenset(overrides))


def resolve_config(options: AnswerOptions, given: Answers, previous: Answers,
                   from_set: frozenset[str] = frozenset()) -> tuple[RunConfig, Answers]:
    interactive = ui.can_ask()
    checks: dict[str, Check] = {}
    if options.check_output_dir:
        checks["output_dir"] = output_dir_check(options.overwrite, options.resume, interactive)
    if given.get("teacher_cache") and not given.get("teacher_api_base"):
        checks["teacher"] = teacher_check(given["teacher_cache"])
    answers, secrets = resolve(given, ask if interactive else None, use_defaults=options.use_defaults,
                               checks=checks, token_found=hub_token_configured, previous=previous,
                               from_set=from_set)
    return RunConfig(**answers), secrets


def edit_one_setting(options: AnswerOptions, cfg: RunConfig, secrets: Answers) -> tuple[RunConfig, Answers]:
    """Ask one setting again (its current value as the default), then any question the change opens."""
    answers = cfg.to_answers()
    key = choose_setting(answers)
    given = {k: v for k, v in answers.items() if k != key}
    new_cfg, new_secrets = resolve_config(options, given, previous={key: answers[key]})
    return new_cfg, {**secrets, **new_secrets}


def config_of(out_dir: str, overrides: Answers | None = None, forced: Answers | None = None) -> RunConfig:
    """The RunConfig an output directory was made with (its answers file), with the user's `--set`
    overrides and what the command itself implies (`forced`: --benchmark-only benchmarks)."""
    path = answers_path(out_dir)
    if not path.is_file():
        raise ui.UserError(f"{out_dir} has no {ANSWERS_FILE}; is it a finetuner output directory?")
    given = {**load_answers(path), **(forced or {}), **(overrides or {}), "output_dir": out_dir}
    answers, _ = resolve(given, None, use_defaults=True, token_found=lambda: True,
                         from_set=frozenset(overrides or ()))
    return RunConfig(**answers)


# ---- checks only the command line knows ------------------------------------------------------

# Directories the user agreed to write into in this process: a later pass over the answers (a
# setting changed at "Start?") does not ask again.
_CONSENTED: set[Path] = set()


def output_dir_check(overwrite: bool, resume: bool, interactive: bool) -> Check:
    """An existing non-empty output directory is used only with consent; nothing is ever deleted."""

    def check(value: str) -> str | None:
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            return f"{value} exists and is a file, not a directory"
        if not path.exists() or overwrite or resume:
            return None
        if not [p for p in path.iterdir() if p.name != ANSWERS_FILE] or path.resolve() in _CONSENTED:
            return None
        if interactive:
            if ui.confirm(f"{value} already has files. Write into it anyway? Nothing is deleted; "
                          "files with the same names are replaced.", default=False):
                _CONSENTED.add(path.resolve())
                return None
            return "choose another directory"
        return f"{value} exists and is not empty; pass --overwrite to write into it, or choose another directory"

    return check


def teacher_check(teacher_cache: str) -> Check:
    """The teacher must exist, unless `teacher_cache` already holds its complete cache."""
    from finetuner.sources import check_model

    def check(value: str) -> str | None:
        problem = check_model(value)
        if problem is None:
            return problem
        from finetuner.teachers import topk_cache

        manifest = topk_cache.complete_manifest(Path(str(teacher_cache)))
        return None if manifest and manifest["fingerprint"]["teacher"] == value else problem

    return check


def hub_token_configured() -> bool:
    from finetuner.hub import find_token

    return find_token() is not None


def hub_token_for_upload() -> str | None:
    """--upload-only's token: asked at a terminal when none is configured, else None (the upload
    then finds the configured one, or says how to log in)."""
    if hub_token_configured() or not ui.can_ask():
        return None
    return ask(HUB_TOKEN, None, {})
