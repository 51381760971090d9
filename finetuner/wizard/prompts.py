"""The wizard at the terminal: one question asked through ui's prompts, and the two choices around
the plan (start, change a setting, or quit)."""

from __future__ import annotations

import re
from typing import Any

from finetuner import ui
from finetuner.config import coerce
from finetuner.wizard.questions import QUESTIONS, Answers, Question

PATH_KEYS = ("model", "teacher", "student", "output_dir", "dataset")  # Tab completes file names


def ask(question: Question, default: Any, answers: Answers) -> Any:
    """Prompt for one answer (its help line above it); raises KeyboardInterrupt on Ctrl-C.

    A bad answer is explained on the line right under the prompt, by the resolve loop that asks again."""
    help_text = question.help_for(answers)
    if help_text:
        ui.console.print(f"  [dim]{ui.escape(help_text)}[/]")
    message = question.text(answers)
    if question.kind == "text" and default is not None and "(Enter" in message and _clearable(question.key):
        # "(Enter for none)" is false once a value is offered: Enter keeps it, and `none` clears it.
        message = re.sub(r"\s*\(Enter[^)]*\)", "", message) + " (Enter keeps it; none clears it)"
    if question.kind == "select":
        return ui.choose(message, question.choices, default=default)
    if question.kind == "confirm":
        return ui.confirm(message, default=bool(default))
    if question.kind == "secret":
        return ui.secret(message)
    return ui.text(message, default, paths=question.key in PATH_KEYS)


def _clearable(key: str) -> bool:
    """Whether the setting may be empty (None), which typing `none` gives."""
    try:
        return coerce(key, "none") is None
    except ValueError:
        return False


def choose_setting(answers: Answers) -> str:
    """The key of the setting to change, picked from those the wizard asks, each shown with its value."""
    editable = [q for q in QUESTIONS if q.ask and q.key in answers]
    return ui.choose("Which setting? (type to filter)", [(f"{q.key} = {answers[q.key]}", q.key) for q in editable],
                     search=True)


def confirm_start() -> str:
    """'start', 'edit' (change one setting, then see the plan again) or 'quit'."""
    ui.flush_typeahead()  # an Enter pressed during the checks must not start the run unseen
    return ui.choose("Start?", [("Yes, start", "start"),
                                ("Change a setting first", "edit"),
                                ("No, not now (the answers are saved for next time)", "quit")])
