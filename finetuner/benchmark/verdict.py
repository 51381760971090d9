"""Did it pay? The acceptance checks of a benchmark report, each passed or failed with its numbers.

Distillation (the usual criteria for a distilled model): at least 90% of the teacher's ROUGE-L
against the references, at least 1.5x its decoding speed, at least 40% fewer parameters, and a
loop rate no higher than the teacher's; with an SFT baseline, also whether distillation beat
plain fine-tuning of the same student, and by how much. Fine-tuning: better than the base model
on ROUGE-L, and no more loops.

report["verdict"] = {"checks": [{"name", "passed": true | false | null (not measurable),
                                 "measured", "target", "text"}, ...],
                     "passed": int, "total": int, "summary": one line}
"""

from __future__ import annotations

from typing import Any

QUALITY_TARGET = 0.90  # share of the teacher's ROUGE-L
SPEED_TARGET = 1.5  # times the teacher's tokens/s
SMALLER_TARGET = 0.40  # share of the teacher's parameters removed

_MARK = {True: "✓", False: "✗", None: "–"}


def _check(name: str, passed: bool | None, measured: Any, target: Any, text: str, short: str = "") -> dict:
    return {"name": name, "passed": passed, "measured": measured, "target": target,
            "text": f"{_MARK[passed]} {name}: {text}", "short": short}


def verdict(report: dict) -> dict | None:
    models = {m["label"]: m for m in report["models"]}
    final = report["models"][-1]
    if report.get("teacher"):
        checks = distillation_checks(final, models[report["teacher"]])
        if report.get("sft_baseline"):
            checks.append(_beats_sft(final, models[report["sft_baseline"]]))
    elif report.get("baseline"):
        checks = fine_tuning_checks(final, models[report["baseline"]])
    else:
        return None
    return {"checks": checks, "passed": sum(c["passed"] is True for c in checks), "total": len(checks),
            "summary": _summary(report, checks)}


def distillation_checks(student: dict, teacher: dict) -> list[dict]:
    checks = []
    s_rl, t_rl = student["rouge"]["rougeL"], teacher["rouge"]["rougeL"]
    share = s_rl / t_rl if t_rl > 0 else None
    checks.append(_check("quality", None if share is None else share >= QUALITY_TARGET, _round(share),
                         QUALITY_TARGET,
                         f"ROUGE-L {s_rl:.3f} is {_pct(share)} of the teacher's {t_rl:.3f} "
                         f"(target ≥ {QUALITY_TARGET:.0%})", f"ROUGE-L {_pct(share)} of the teacher's"))
    s_speed, t_speed = student.get("tokens_per_s"), teacher.get("tokens_per_s")
    if s_speed and t_speed:
        speedup = s_speed / t_speed
        checks.append(_check("speed", speedup >= SPEED_TARGET, round(speedup, 3), SPEED_TARGET,
                             f"{speedup:.2f}x the teacher's tokens/s ({s_speed:.1f} vs {t_speed:.1f}; "
                             f"target ≥ {SPEED_TARGET}x)", f"{speedup:.2f}x its speed"))
    else:
        checks.append(_check("speed", None, None, SPEED_TARGET, "not measured: the teacher answered from a file"))
    s_params, t_params = student.get("parameters"), teacher.get("parameters")
    if s_params and t_params:
        smaller = 1 - s_params / t_params
        checks.append(_check("size", smaller >= SMALLER_TARGET, round(smaller, 4), SMALLER_TARGET,
                             f"{smaller:.0%} fewer parameters ({s_params / 1e6:.1f}M vs {t_params / 1e6:.1f}M; "
                             f"target ≥ {SMALLER_TARGET:.0%})", f"{smaller:.0%} smaller"))
    else:
        checks.append(_check("size", None, None, SMALLER_TARGET, "not measured: the teacher's size is unknown"))
    checks.append(_loops(student, teacher, "the teacher's"))
    return checks


def fine_tuning_checks(tuned: dict, base: dict) -> list[dict]:
    t_rl, b_rl = tuned["rouge"]["rougeL"], base["rouge"]["rougeL"]
    return [_check("quality", t_rl > b_rl, round(t_rl - b_rl, 4), 0.0,
                   f"ROUGE-L {t_rl:.3f} vs the base model's {b_rl:.3f} ({t_rl - b_rl:+.3f}; target: higher)",
                   f"ROUGE-L {t_rl - b_rl:+.3f} over the base"),
            _loops(tuned, base, "the base model's")]


def _loops(model: dict, reference: dict, whose: str) -> dict:
    mine, theirs = model["loop_rate"], reference["loop_rate"]
    return _check("loops", mine <= theirs, mine, theirs,
                  f"{mine:.0%} of answers loop vs {whose} {theirs:.0%} (target: no more)",
                  f"loops {mine:.0%} vs {theirs:.0%}")


def _beats_sft(student: dict, sft: dict) -> dict:
    s_rl, p_rl = student["rouge"]["rougeL"], sft["rouge"]["rougeL"]
    return _check("beats plain fine-tuning", s_rl > p_rl, round(s_rl - p_rl, 4), 0.0,
                  f"ROUGE-L {s_rl:.3f} vs {p_rl:.3f} for the same student fine-tuned plainly ({s_rl - p_rl:+.3f}); "
                  f"perplexity {_num(student.get('perplexity'))} vs {_num(sft.get('perplexity'))}",
                  f"ROUGE-L {s_rl - p_rl:+.3f} vs plain fine-tuning")


def _summary(report: dict, checks: list[dict]) -> str:
    measured = [c for c in checks if c["passed"] is not None]
    failed = [c["name"] for c in measured if not c["passed"]]
    if report.get("teacher"):
        worth = "Distillation paid" if not failed else "Not yet worth keeping"
    else:
        worth = "Fine-tuning paid" if not failed else "Fine-tuning did not pay"
    passed = len(measured) - len(failed)
    facts = ", ".join(c["short"] for c in measured)
    missed = f"; missed: {', '.join(failed)}" if failed else ""
    return f"{worth}: {passed} of {len(measured)} checks passed{missed} ({facts})"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
