"""Which teacher responses are trained on, and why each other one is dropped.

Always: a response not written (spend cap), empty, or cut off at generation_max_new_tokens
(generation_drop_incomplete). Then the filters named in generation_filters, each a reason of its own:
- refusals: "I'm sorry, but I can't…", "As an AI language model…" boilerplate, and NOT_IN_TEXT
  (a document question its chunk does not answer);
- echoes: a response that only repeats its prompt;
- verified: the response's final answer differs from the reference's (finetuner.final_answer,
  flexible match); rows whose reference has no checkable answer are kept;
- duplicates: the same response (ignoring case, spacing and punctuation) as an earlier kept one, or
  nearly so (word 3-gram Jaccard >= 0.9); responses under 8 words may repeat (short answers do).
Last, a response whose training row is longer than max_length, under long_rows: drop.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field

from finetuner.final_answer import matches, reference_answer
from finetuner.teachers.documents import NOT_IN_TEXT
from finetuner.teachers.response_cache import Reply

NOT_WRITTEN, EMPTY, CUT_OFF, TOO_LONG = "not written", "empty", "cut off", "too long for max_length"
REFUSAL, ECHO, UNVERIFIED, DUPLICATE = "refusal", "echo", "unverified", "duplicate"
FILTERS = {"refusals": REFUSAL, "echoes": ECHO, "verified": UNVERIFIED, "duplicates": DUPLICATE}

_REFUSAL_START = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry|i apologi[sz]e|unfortunately)?[,.!\s]*(?:but\s+)?"
    r"(?:i\s+(?:can(?:no|')t|cannot|am (?:not able|unable)|'m (?:not able|unable)|won'?t|must decline|"
    r"do(?:n'?t| not) have (?:access|the ability|enough information)))", re.IGNORECASE)
_AS_AN_AI = re.compile(r"\bas an? (?:ai|artificial intelligence|(?:large )?language model)\b", re.IGNORECASE)
NEAR = 0.9
SHORT_WORDS = 8


def filter_names(setting: str) -> list[str]:
    names = [name.strip() for name in setting.split(",") if name.strip()]
    return [] if "none" in names else names


def is_refusal(text: str) -> bool:
    head = text.strip()[:300].replace("’", "'")
    return bool(_REFUSAL_START.match(head) or _AS_AN_AI.search(head) or NOT_IN_TEXT.casefold() in head.casefold())


def is_echo(response: str, prompt: str) -> bool:
    said, asked = _words(response), _words(prompt)
    if not said or not asked:
        return False
    if len(said) >= max(3, len(asked) // 2) and f" {' '.join(said)} " in f" {' '.join(asked)} ":
        return True  # a long enough piece of the prompt, said back
    return difflib.SequenceMatcher(None, said, asked, autojunk=False).ratio() >= NEAR


def verdict_of(response: str, reference: str | None) -> bool | None:
    """True/False: the final answers match or not; None: the reference has nothing to check."""
    if not reference or reference_answer(reference) is None:
        return None
    return matches(response, reference)[1]


@dataclass
class Duplicates:
    """Kept responses so far, to find exact and near duplicates of a new one."""
    exact: set = field(default_factory=set)
    postings: dict = field(default_factory=dict)  # shingle -> indices of kept responses holding it
    sizes: list = field(default_factory=list)

    def seen(self, text: str) -> bool:
        words = _words(text)
        if len(words) < SHORT_WORDS:
            return False
        key = " ".join(words)
        shingles = {tuple(words[i:i + 3]) for i in range(len(words) - 2)}
        shared = Counter(i for s in shingles for i in self.postings.get(s, ()))
        if key in self.exact or any(n / (len(shingles) + self.sizes[i] - n) >= NEAR for i, n in shared.items()):
            return True
        self.exact.add(key)
        for shingle in shingles:
            self.postings.setdefault(shingle, []).append(len(self.sizes))
        self.sizes.append(len(shingles))
        return False


@dataclass
class Judge:
    """Decides each response in turn: None (kept) or the reason it is dropped."""
    filters: list[str]
    drop_incomplete: bool
    duplicates: Duplicates = field(default_factory=Duplicates)

    def reason(self, reply: Reply | None, prompt: str, reference: str | None = None) -> str | None:
        if reply is None:
            return NOT_WRITTEN
        text = reply.text.strip()
        if not text:
            return EMPTY
        if self.drop_incomplete and reply.finish_reason == "length":
            return CUT_OFF
        if "refusals" in self.filters and is_refusal(text):
            return REFUSAL
        if "echoes" in self.filters and is_echo(text, prompt):
            return ECHO
        if "verified" in self.filters and verdict_of(text, reference) is False:
            return UNVERIFIED
        if "duplicates" in self.filters and self.duplicates.seen(text):
            return DUPLICATE
        return None


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.casefold()).split()
