"""The verdict's checks, each with its uncertainty (uncertainty.py): passed True when its interval
clears the target, False when it clears it the other way, None when the target lies inside ("not
measurable at this sample size", with about how many answers would settle it) or nothing was measured.

Quality uses the strongest measure both models have: exact match of the final answers (flexible
extraction), else the judge's 1-5 scores, else ROUGE-L against the references. A task metric on
which the teacher itself is near zero cannot separate the models and is left for the next measure.
Shares (accuracy, loops) get Wilson intervals; means (judge, ROUGE-L) normal ones; the model the
check compares with (teacher, base model) is taken at its measured value, as the target.
"""

from __future__ import annotations

from typing import Any

from finetuner.benchmark.uncertainty import (answers_to_settle, mean_interval, paired_difference, sd, settle,
                                             share_spread, wilson)

QUALITY_TARGET = 0.90  # share of the teacher's accuracy, judge score or ROUGE-L
SPEED_TARGET = 1.5  # times the teacher's tokens/s
# Share of the teacher's parameters removed. A third, not 40%: halving the decoder layers (DistilBERT's
# recipe, and the built-in default) removes 39.7% of SmolLM2-135M, whose embeddings stay whole.
SMALLER_TARGET = 1 / 3
NEAR_ZERO = 0.10  # a teacher below this accuracy cannot separate the models
DISAGREE = 1.25  # speed repeats whose ratios spread wider than this are not a measurement

_MARK = {True: "✓", False: "✗", None: "–"}
UNSETTLED = "not measurable at this sample size"


def check(name: str, passed: bool | None, measured: Any, target: Any, text: str, short: str = "",
          status: str | None = None) -> dict:
    status = status or {True: "pass", False: "fail", None: "unsettled"}[passed]
    return {"name": name, "passed": passed, "status": status, "measured": measured, "target": target,
            "text": f"{_MARK[passed]} {name}: {text}", "short": short}


def note(name: str, text: str) -> dict:
    return {"name": name, "passed": None, "status": "note", "measured": None, "target": None,
            "text": f"· {name}: {text}", "short": ""}


# ---- what an answer scores, per measure ---------------------------------------------------------

MEASURES = {"accuracy": "accuracy", "judge": "judge score", "rougeL": "ROUGE-L"}


def values(model: dict, measure: str) -> list[float | None]:
    """One value per answer (None: the judge left it unscored)."""
    if measure == "accuracy":
        return [float(s["final_answer"]["flexible_correct"]) for s in model["samples"]]
    if measure == "judge":
        return [s.get("judge", {}).get("score") for s in model["samples"]]
    return [s["rougeL"] for s in model["samples"]]


def has(model: dict, measure: str) -> bool:
    if measure == "accuracy":
        return bool(model.get("accuracy")) and all("final_answer" in s for s in model["samples"])
    if measure == "judge":
        return bool(model.get("judge")) and (model["judge"].get("scored") or 0) >= 2
    return bool(model["samples"]) and all("rougeL" in s for s in model["samples"])


def interval(model: dict, measure: str) -> tuple[float, float, float, float]:
    """(estimate, low, high, spread of one answer) of a model's measure."""
    scores = [v for v in values(model, measure) if v is not None]
    if measure == "accuracy":
        low, high = wilson(int(sum(scores)), len(scores))
        p = sum(scores) / len(scores)
        return p, low, high, share_spread(p)
    mean, low, high = mean_interval(scores)
    return mean, low, high, sd(scores)


def show(measure: str, value: float) -> str:
    return f"{value:.0%}" if measure == "accuracy" else f"{value:.2f}" if measure == "judge" else f"{value:.3f}"


def settles(estimate: float, spread: float, target: float) -> str:
    n = answers_to_settle(spread, estimate, target)
    return f"{UNSETTLED}; " + (f"about {n:,} answers would settle it" if n else
                               "it equals the target, and no number of answers settles a tie")


# ---- the checks -------------------------------------------------------------------------------

def quality(final: dict, other: dict, measure: str, distillation: bool) -> dict:
    """Distillation: ≥ 90% of the teacher's measure. Fine-tuning: higher than the base model's."""
    est, low, high, spread = interval(final, measure)
    ref = interval(other, measure)[0]
    target = QUALITY_TARGET * ref if distillation else ref
    passed = settle(low, high, target, higher_is_better=True, strict=not distillation)
    name, whose = MEASURES[measure], "the teacher's" if distillation else "the base model's"
    got = f"{name} {show(measure, est)} (95% CI {show(measure, low)}-{show(measure, high)}"
    got += f"; strict {final['accuracy']['strict']['accuracy']:.0%})" if measure == "accuracy" else ")"
    if distillation:
        share = est / ref if ref > 0 else None
        wanted = f"target ≥ {QUALITY_TARGET:.0%}, i.e. ≥ {show(measure, target)}"
        text = f"{got} is {_pct(share)} of {whose} {show(measure, ref)} ({wanted})"
        short, measured = f"{name} {_pct(share)} of the teacher's", None if share is None else round(share, 4)
    else:
        text = f"{got} vs {whose} {show(measure, ref)} ({est - ref:+.3g}; target: higher)"
        short, measured = f"{name} {est - ref:+.3g} over the base", round(est - ref, 4)
    if passed is None:
        text += f": {settles(est, spread, target)}"
    return check("quality", passed, measured, round(target, 4), text, short)


def near_zero_note(teacher: dict, final: dict) -> dict:
    solved, student = teacher["accuracy"]["flexible"]["accuracy"], final["accuracy"]["flexible"]["accuracy"]
    return note("accuracy", f"the teacher solves {solved:.0%} of these (the student {student:.0%}); accuracy "
                            "cannot separate the models, so quality is judged by the next measure")


def speed(student: dict, teacher: dict) -> dict:
    s_speed, t_speed = student.get("tokens_per_s"), teacher.get("tokens_per_s")
    if not (s_speed and t_speed):
        return check("speed", None, None, SPEED_TARGET, "not measured: the teacher answered from a file",
                     status="not measured")
    ratio = s_speed / t_speed
    ratios = [s / t for s, t in zip(student.get("speed_repeats") or [s_speed],
                                    teacher.get("speed_repeats") or [t_speed])]
    low, high = min(ratios), max(ratios)
    text = f"{ratio:.2f}x the teacher's tokens/s ({s_speed:.1f} vs {t_speed:.1f}, best of {len(ratios)} alternate " \
           f"timings; target ≥ {SPEED_TARGET}x)"
    if high / low > DISAGREE:
        passed, text = None, text + f": the repeats disagree ({low:.2f}x to {high:.2f}x), {UNSETTLED}; time it on " \
                                    "an idle machine"
    else:
        passed = True if low >= SPEED_TARGET else False if high < SPEED_TARGET else None
        text += f": repeats {low:.2f}x to {high:.2f}x straddle the target, {UNSETTLED}" if passed is None else ""
    return check("speed", passed, round(ratio, 3), SPEED_TARGET, text, f"{ratio:.2f}x its speed")


def size(student: dict, teacher: dict) -> dict:
    s_params, t_params = student.get("parameters"), teacher.get("parameters")
    if not (s_params and t_params):
        return check("size", None, None, SMALLER_TARGET, "not measured: the teacher's size is unknown",
                     status="not measured")
    smaller = 1 - s_params / t_params
    return check("size", smaller >= SMALLER_TARGET, round(smaller, 4), SMALLER_TARGET,
                 f"{smaller:.1%} fewer parameters ({s_params / 1e6:.1f}M of {t_params / 1e6:.1f}M, "
                 f"{1 - smaller:.1%} kept; target ≥ {SMALLER_TARGET:.0%} fewer, exact count)",
                 f"{smaller:.1%} smaller")


def loops(model: dict, other: dict, whose: str) -> dict:
    n = len(model["samples"])
    hits = sum(bool(s.get("loops")) for s in model["samples"]) if n else 0
    mine, theirs = (hits / n if n else model["loop_rate"]), other["loop_rate"]
    low, high = wilson(hits, n) if n else (mine, mine)
    passed = True if hits == 0 and n else settle(low, high, theirs, higher_is_better=False)
    text = f"{mine:.0%} of answers loop (95% CI {low:.0%}-{high:.0%}) vs {whose} {theirs:.0%} (target: no more)"
    if passed is None:
        text += f": {settles(mine, share_spread(mine), theirs)}"
    return check("loops", passed, round(mine, 4), theirs, text, f"loops {mine:.0%} vs {theirs:.0%}")


def beats_sft(student: dict, sft: dict, measure: str) -> dict:
    """The distilled student against the same student fine-tuned plainly, paired on the same prompts."""
    pairs = [(a, b) for a, b in zip(values(student, measure), values(sft, measure)) if a is not None and b is not None]
    diff, low, high = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
    passed = settle(low, high, 0.0, higher_is_better=True, strict=True)
    name = MEASURES[measure]
    spread = sd([a - b for a, b in pairs])
    text = (f"{name} {diff:+.3g} over the same student fine-tuned plainly (95% CI {low:+.3g} to {high:+.3g}, "
            f"paired on {len(pairs)} prompts); perplexity {_num(student.get('perplexity'))} vs "
            f"{_num(sft.get('perplexity'))}")
    if passed is None:
        text += f": {settles(diff, spread, 0.0)}"
    return check("beats plain fine-tuning", passed, round(diff, 4), 0.0, text,
                 f"{name} {diff:+.3g} vs plain fine-tuning")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
