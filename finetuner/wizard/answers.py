"""The answers file: the dump/load pair that makes every run replayable, plus `--set` overrides
and the previous run's answers that become a new run's defaults."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from finetuner import distributed, ui
from finetuner.config import FIELD_NAMES
from finetuner.wizard.questions import HUB_TOKEN, QUESTIONS, Answers

ANSWERS_FILE = "finetuner-answers.yaml"


def load_answers(path: str | os.PathLike) -> Answers:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ui.UserError(f"answers file not found: {path}", hint="check the path given to --answers")
    except (OSError, UnicodeDecodeError) as exc:
        raise ui.UserError(f"can't read answers file {path}: {exc}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ui.UserError(f"answers file {path} is not valid YAML{line}",
                           hint="it should be flat 'key: value' lines, as finetuner writes them")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ui.UserError(f"answers file {path} must be a mapping of setting: value, "
                           f"not a {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def save_answers(path: str | os.PathLike, answers: Answers) -> Path:
    """Write answers atomically (temp file + rename), never including secrets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret_keys = {q.key for q in (*QUESTIONS, HUB_TOKEN) if q.secret}
    public = {k: v for k, v in answers.items() if k not in secret_keys}
    body = ("# finetuner answers: replay with  " + replay_command(path) + "\n"
            + yaml.safe_dump(public, sort_keys=False, allow_unicode=True))
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
        tmp.write(body)
    os.replace(tmp.name, path)
    return path


def answers_path(out_dir: str | os.PathLike) -> Path:
    """Where a run's answers are saved: in its output directory, beside the model."""
    return Path(out_dir) / ANSWERS_FILE


def resume_command(out_dir: str | os.PathLike, world_size: int = 1) -> str:
    """The command that continues the run in `out_dir` from its last checkpoint."""
    # Under torchrun / accelerate launch, the same launcher and process count resume the run.
    launcher = f"<the same launcher, {world_size} processes>" if world_size > 1 else "python"
    return replay_command(answers_path(out_dir), "--resume", "--yes", launcher=launcher)


def replay_command(path: str | os.PathLike, *flags: str, launcher: str = "python") -> str:
    """The command line that runs the answers file at `path` again (`launcher` runs the script)."""
    return " ".join([launcher, "finetune_cli.py --answers", str(path), *flags])


def find_previous_answers(root: str | os.PathLike = ".", depth: int = 3) -> Path | None:
    """The newest answers file in the directory tree below `root` (symlinks, hidden folders and
    checkpoints not followed), whose answers become the defaults of a new interactive run."""
    root = Path(root)
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        subfolders[:] = [] if level >= depth else [d for d in subfolders if not d.startswith((".", "checkpoint"))
                                                    and d not in ("node_modules", "__pycache__")]
        if ANSWERS_FILE in files:
            found.append(Path(folder) / ANSWERS_FILE)
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


# A new run should not write into the previous run's folder by default.
NOT_REUSED = ("output_dir",)


def previous_defaults(path: Path) -> Answers:
    try:
        answers = load_answers(path)
    except ui.UserError:
        return {}
    return {k: v for k, v in answers.items() if k in FIELD_NAMES and k not in NOT_REUSED}


def parse_overrides(items: list[str]) -> Answers:
    """`--set KEY=VALUE` pairs; values stay strings and are typed like any other answer."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ui.UserError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set epochs=1")
        overrides[key.strip()] = value
    return overrides


def answers_kept(err: ui.UserError, out_dir: str, answers: Answers) -> ui.UserError:
    """A check after the questions failed: the answers typed are saved, and the error says how to replay them."""
    if not ui.can_ask() or not distributed.is_main_process():
        return err  # nothing was typed: the answers are in the file and --set given
    saved = save_answers(answers_path(out_dir), answers)
    replay = f"your answers are saved; fix the setting (--set KEY=VALUE, or in the file) and run:  {replay_command(saved)}"
    return ui.UserError(err.message, hint=f"{err.hint}; {replay}" if err.hint else replay, details=err.details)
