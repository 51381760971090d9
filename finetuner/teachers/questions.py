"""Questions about a document chunk: how the teacher is asked for them (a JSON list, with the
server's structured output where it has one), and how its reply is read.

A reply is read as JSON first (a list, or an object holding one, also inside a ```json fence);
otherwise line by line, strictly: numbering, bullets, "Question 1:" labels, markdown and quotes are
stripped, code blocks skipped, and only lines that end in a question mark are kept, so preambles
("Here are three questions:"), headings and stray code never become training prompts; nor does a
line that says something before its question, or asks the user what they want ("I'm ready to
help. What's the text you'd like to edit?"). Questions
are de-duplicated ignoring case, spacing and punctuation.
"""

from __future__ import annotations

import json
import re

from finetuner.teachers.response_cache import Request

QUESTION_PROMPT = ("Write {n} different questions that the text below answers. Each question must make "
                   "sense on its own, without the text, and end with a question mark. Reply with JSON "
                   "only, in this form: {{\"questions\": [\"...\", \"...\"]}}\n\nText:\n{chunk}")
# OpenAI-style structured output; a server that rejects it is asked again without (ApiTeacher).
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "questions", "strict": True, "schema": {
    "type": "object", "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
    "required": ["questions"], "additionalProperties": False}}}

_LABEL = re.compile(r"^\s*(?:[-*•+>]\s*|#{1,6}\s*|\(?\d{1,3}[.):]\s*|\(?[a-z][.)]\s+|"
                    r"(?:q|question)\s*\d*\s*[:.)]\s*)+", re.IGNORECASE)
_MARKUP = re.compile(r"\*\*|__|`|^\*|\*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# The model talking to its user, not a question about the text: "I'm ready to help. What's the text
# you'd like to edit?", "How can I help you today?"
_CHATTER = re.compile(r"(?:(?<!Dr)(?<!Mr)(?<!Ms)(?<!St)(?<!vs)(?<!e\.g)(?<!i\.e)[.!]\s+[A-Z])|\b(?:you'?d like|would you like|do you want|can i help|how can i|"
                      r"let me know|help you)\b", re.IGNORECASE)
_MIN_WORDS = 3


def question_request(chunk: str, count: int) -> Request:
    return Request("questions", chunk, (("user", QUESTION_PROMPT.format(n=count, chunk=chunk)),))


def parse_questions(text: str, limit: int) -> list[str]:
    """The questions in a teacher's reply, at most `limit`, in order, without duplicates."""
    found = _from_json(text)
    candidates = found if found is not None else _lines_outside_code(text)
    questions, seen = [], set()
    for candidate in candidates:
        question = clean_question(candidate)
        if question is None or (key := _identity(question)) in seen:
            continue
        seen.add(key)
        questions.append(question)
    return questions[:limit]


def clean_question(line: str) -> str | None:
    """One line as a question (labels and markup stripped), or None when it is not a question."""
    line = _MARKUP.sub("", _LABEL.sub("", line.strip())).strip().strip("\"'“”").strip()
    line = _LABEL.sub("", line).strip()  # "**Question 1:** What…" has its label inside the bold
    if not line.endswith("?") or len(line.split()) < _MIN_WORDS or _CHATTER.search(line):
        return None
    return line


def _identity(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", question.casefold()).split())


def _from_json(text: str) -> list[str] | None:
    """The list of strings a JSON reply holds, or None when the reply is not JSON."""
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    end = max(text.rfind("]"), text.rfind("}"))
    try:
        value = json.loads(text[start:end + 1])
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("questions", next((v for v in value.values() if isinstance(v, list)), None))
    if not isinstance(value, list):
        return None
    items = [item.get("question", "") if isinstance(item, dict) else item for item in value]
    return [item for item in items if isinstance(item, str)] or None


def _lines_outside_code(text: str) -> list[str]:
    lines, in_code = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines
