"""The judge's rubric: what it is asked about each answer, and how its reply is read (pure).

The judge sees the question, the reference answer and the model's answer (and, for data written
from documents, the source text), and grades correctness against the reference on 1-5; with a
source text, also faithfulness to it. It replies with a score line and a one-sentence reason. A
reply without a score from 1 to 5 is off-rubric: recorded unscored, never as 0.
"""

from __future__ import annotations

import re

RUBRIC_VERSION = 1  # part of every cached judgement's settings: a changed rubric asks again

RUBRIC = """Grade the ANSWER to the QUESTION against the REFERENCE answer, on correctness:
5 = correct and complete: the same final answer as the reference, reasoning sound
4 = the same final answer, with small flaws in the reasoning or wording
3 = partly correct: a right approach or part of the answer, but the final answer is wrong or missing
2 = mostly wrong, with some relevant content
1 = wrong, off-topic, empty, or repeating itself"""

FAITHFULNESS = """The answer must also be faithful to the SOURCE text: an answer that states something
the source does not support scores at most 3, whatever its agreement with the reference."""

REPLY = """Reply with exactly two lines and nothing else:
Score: <a whole number from 1 to 5>
Reason: <one short sentence>"""

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([1-5])(?:\s*/\s*5)?\b(?!\.\d)", re.IGNORECASE)
_REASON = re.compile(r"reason\s*[:=]\s*(.+)", re.IGNORECASE)


def messages(question: str, reference: str, answer: str, context: str | None = None) -> tuple[tuple[str, str], ...]:
    """The (role, content) turns sent to the judge for one answer."""
    rubric = RUBRIC + ("\n" + FAITHFULNESS if context else "")
    parts = [f"QUESTION:\n{question}", f"REFERENCE:\n{reference}"]
    if context:
        parts.insert(0, f"SOURCE:\n{context}")
    parts.append(f"ANSWER:\n{answer if answer.strip() else '(empty)'}")
    return (("system", "You grade answers strictly and briefly."),
            ("user", f"{rubric}\n\n" + "\n\n".join(parts) + f"\n\n{REPLY}"))


def read_reply(text: str) -> tuple[int | None, str]:
    """(score, reason) of a judge's reply; score None when the reply is off-rubric."""
    found = _SCORE.search(text)
    reason = _REASON.search(text)
    lines = (reason.group(1) if reason else text).strip().splitlines()
    return (int(found.group(1)) if found else None), (lines[0].strip() if lines else "")[:300]
