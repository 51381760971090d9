"""How sure a benchmark figure is: 95% intervals, and whether an interval settles a target.

A share of answers (loops, correct answers) is binomial: the Wilson score interval, which stays inside
[0, 1] and is not degenerate at 0 or 1 hits. A mean of per-answer scores (a judge's 1-5, ROUGE-L) gets
the normal interval mean ± 1.96 · sd / √n. On 40 answers a share near one half is good to about ±15
points, so a check against a target has three outcomes: the interval clears the target (pass), clears
it the other way (fail), or contains it (not measurable at this sample size).
"""

from __future__ import annotations

import math
from typing import Sequence

Z = 1.96  # 95%


def wilson(hits: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of hits/n; (0, 1) when there are no answers."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = Z) -> tuple[float, float, float]:
    """(mean, low, high): the normal interval of a mean of per-answer values."""
    n = len(values)
    if n == 0:
        return 0.0, float("-inf"), float("inf")
    mean = sum(values) / n
    if n == 1:
        return mean, float("-inf"), float("inf")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)


def settle(low: float, high: float, target: float, higher_is_better: bool, strict: bool = False) -> bool | None:
    """True when [low, high] clears the target the good way, False when it clears it the other
    way, None when the target lies inside (not measurable at this sample size). `strict`: the target
    itself is not good enough (better than the base model), so an interval ending on it does not pass."""
    if higher_is_better:
        if low > target or (low == target and not strict):
            return True
        return False if high < target or (high == target and strict) else None
    if high < target or (high == target and not strict):
        return True
    return False if low > target or (low == target and strict) else None


def answers_to_settle(spread: float, estimate: float, target: float, z: float = Z) -> int | None:
    """About how many answers would put the target outside the interval, if the estimate held:
    z² · spread² / (estimate - target)², spread being the standard deviation of one answer
    (√(p(1-p)) for a share). None when estimate equals target: no sample size settles a tie."""
    gap = abs(estimate - target)
    if gap < 1e-12:
        return None
    return max(1, math.ceil(z * z * max(spread, 1e-6) ** 2 / gap ** 2))


def share_spread(p: float) -> float:
    """The standard deviation of one yes/no answer at rate p (kept off 0 so a target can settle)."""
    p = min(max(p, 0.5 / 1000), 1 - 0.5 / 1000)
    return math.sqrt(p * (1 - p))


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z) -> tuple[float, float, float]:
    """(mean, low, high) of a - b over the same prompts: the pairing removes what both find hard."""
    return mean_interval([x - y for x, y in zip(a, b)], z)


def sd(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
