"""Pure quality metrics on generated text, shared by the benchmark and the quality study.

A loop is the failure that ROUGE against references rewards ("she has 70 gold, she has 70 gold,
..."): the right words, repeated. `loop_rate` counts the answers that contain one.
"""

from __future__ import annotations

import re
from collections import Counter

LOOP_NGRAM = 4  # a loop: some word 4-gram ...
LOOP_REPEATS = 3  # ... that occurs 3 or more times in one answer


def has_loop(text: str, n: int = LOOP_NGRAM, repeats: int = LOOP_REPEATS) -> bool:
    """Whether some word n-gram occurs `repeats` or more times in `text` (case-insensitive;
    punctuation is not part of a word, so "gold," and "gold" are the same word)."""
    words = re.findall(r"\w+", text.lower())
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return any(count >= repeats for count in counts.values())


def loop_rate(texts: list[str], n: int = LOOP_NGRAM, repeats: int = LOOP_REPEATS) -> float:
    """The share of `texts` that loop (0.0 for no texts)."""
    return sum(has_loop(t, n, repeats) for t in texts) / len(texts) if texts else 0.0
