"""The final answer of a response, for exact match: strict and flexible extraction, as
lm-evaluation-harness reports GSM8K.

- **strict**: only an answer the text marks as final: the last `#### X` (GSM8K's format), else the last
  "the answer is X" / "Answer: X". Nothing marked, nothing extracted.
- **flexible**: the strict answer if there is one, else the last number in the text; for a
  multiple-choice reference, the last standalone letter A-E (as in "(B)" or "B.").

Both sides are normalised before comparing: `$`, thousands commas, spaces and a trailing period are
dropped, numbers compare by value ("18.00" equals "18", "-3" is negative three), text is compared
case-folded. A reference is checkable when it has a marked answer or is itself a single number or letter.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Optional, Sequence

_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_SAID = re.compile(r"(?:the (?:final )?answer is|answer:)\s*:?\s*\(?(" + _NUMBER + r"|[A-Ea-e])\)?(?![\w,])",
                   re.IGNORECASE)
_LAST_NUMBER = re.compile(_NUMBER)
_LETTER = re.compile(r"(?:^|[\s(\[])([A-E])(?:[).\]:]|\s|$)")
_SINGLE = re.compile(r"^\s*\(?(" + _NUMBER + r"|[A-Ea-e])\)?\.?\s*$")


def normalize(answer: str) -> str:
    """One spelling per answer: numbers by value, anything else case-folded without edge punctuation."""
    text = answer.strip().rstrip(".").replace("$", "").replace(",", "").replace(" ", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        return answer.strip().strip(".()").casefold()
    return format(value.normalize(), "f") if value != value.to_integral() else str(int(value))


def strict(text: str) -> Optional[str]:
    """The answer the text marks as final, or None."""
    hashes = _HASHES.findall(text)
    if hashes:
        number = _LAST_NUMBER.search(hashes[-1])
        return normalize(number.group(0) if number else hashes[-1])
    said = _SAID.findall(text)
    return normalize(said[-1]) if said else None


def flexible(text: str, multiple_choice: bool = False) -> Optional[str]:
    """The marked answer, else the last number (or, for a letter reference, the last standalone letter)."""
    marked = strict(text)
    if marked is not None:
        return marked
    found = (_LETTER if multiple_choice else _LAST_NUMBER).findall(text)
    return normalize(found[-1]) if found else None


def reference_answer(reference: str) -> Optional[str]:
    """The checkable final answer of a reference, or None when it has none."""
    single = _SINGLE.match(reference)
    return normalize(single.group(1)) if single else strict(reference)


def is_letter(answer: str) -> bool:
    return len(answer) == 1 and answer.isalpha()


def checkable_share(references: Sequence[str]) -> float:
    """The share of references with a checkable final answer (task_metric auto wants nearly all)."""
    return sum(reference_answer(r) is not None for r in references) / len(references) if references else 0.0


def matches(response: str, reference: str) -> tuple[bool, bool]:
    """(strict, flexible) exact match of a response's final answer against the reference's."""
    expected = reference_answer(reference)
    if expected is None:
        return False, False
    letter = is_letter(expected)
    return strict(response) == expected, flexible(response, multiple_choice=letter) == expected


def mean_and_stderr(hits: Sequence[bool]) -> tuple[float, float]:
    """Accuracy and its standard error, as lm-evaluation-harness reports them (sample std / sqrt(n))."""
    n = len(hits)
    if n == 0:
        return 0.0, 0.0
    p = sum(hits) / n
    return p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
