"""Did it pay? The acceptance checks of a benchmark report, each with its numbers and uncertainty.

Distillation (the usual criteria for a distilled model): at least 90% of the teacher's quality (its
accuracy, else its judge score, else its ROUGE-L: checks.py), at least 1.5x its decoding speed, at
least 40% fewer parameters, and a loop rate no higher than the teacher's; with an SFT baseline, also
whether distillation beat plain fine-tuning of the same student. Fine-tuning: better quality than the
base model, and no more loops. Each check passes only when its 95% interval clears the target, fails
when it clears it the other way, and is otherwise "not measurable at this sample size".

Notes (not checks) say what else was measured: a task metric the teacher cannot solve, the judge's
mean score per model, and how much faster the student makes its teacher as a speculative draft.

report["verdict"] = {"checks": [{"name", "passed": true | false | null, "status": "pass" | "fail" |
                                 "unsettled" | "not measured" | "note", "measured", "target", "text",
                                 "short"}, ...],
                     "passed": int, "total": int (checks measured, settled or not), "summary": one line}
"""

from __future__ import annotations

from finetuner.benchmark import checks
from finetuner.benchmark.checks import NEAR_ZERO, QUALITY_TARGET, SMALLER_TARGET, SPEED_TARGET  # noqa: F401


def verdict(report: dict) -> dict | None:
    models = {m["label"]: m for m in report["models"]}
    final = report["models"][-1]
    distillation = bool(report.get("teacher"))
    other = models[report["teacher"]] if distillation else models.get(report.get("baseline") or "")
    if other is None:
        return None
    measure, notes = quality_measure(report, final, other, distillation)
    found = [checks.quality(final, other, measure, distillation)]
    if distillation:
        found += [checks.speed(final, other), checks.size(final, other), checks.loops(final, other, "the teacher's")]
        if report.get("sft_baseline"):
            found.append(checks.beats_sft(final, models[report["sft_baseline"]], measure))
    else:
        found.append(checks.loops(final, other, "the base model's"))
    notes += judge_notes(report) + draft_notes(report)
    measured = [c for c in found if c["status"] in ("pass", "fail", "unsettled")]
    return {"checks": found + notes, "passed": sum(c["passed"] is True for c in found), "total": len(measured),
            "summary": _summary(distillation, found)}


def quality_measure(report: dict, final: dict, other: dict, distillation: bool) -> tuple[str, list[dict]]:
    """The strongest measure both models have, and a note when the task metric was passed over."""
    notes = []
    used = (report.get("task_metric") or {}).get("used")
    if used and checks.has(final, "accuracy") and checks.has(other, "accuracy"):
        if not distillation or other["accuracy"]["flexible"]["accuracy"] >= NEAR_ZERO:
            return "accuracy", notes
        notes.append(checks.near_zero_note(other, final))
    if checks.has(final, "judge") and checks.has(other, "judge"):
        return "judge", notes
    return "rougeL", notes


def judge_notes(report: dict) -> list[dict]:
    block = report.get("judge")
    if not block:
        return []
    scored = [m for m in report["models"] if m.get("judge") and m["judge"].get("mean") is not None]
    parts = [f"{m['label']} {m['judge']['mean']:.2f} (95% CI {_bound(m['judge']['low'])}-{_bound(m['judge']['high'])}"
             f", {m['judge']['scored']} scored)" for m in scored]
    text = f"{block['model']}'s mean score, 1-5: " + ("; ".join(parts) if parts else "no answer was scored")
    if block.get("unscored"):
        text += f"; {block['unscored']} off-rubric replies left unscored"
    if block.get("status", "ok") != "ok":
        text += " (incomplete: see the warning above)"
    return [checks.note("judge", text)]


def draft_notes(report: dict) -> list[dict]:
    draft = report.get("speculative")
    if not draft:
        return []
    if draft.get("why"):
        return [checks.note("as a draft", f"not measured: {draft['why']}")]
    speedup, repeats = draft["speedup"], draft["speedup_repeats"]
    acceptance = "-" if draft["acceptance"] is None else f"{draft['acceptance']:.0%}"
    text = f"the student makes the teacher {speedup:.2f}x faster (acceptance {acceptance}"
    text += (f"; {draft['teacher_tokens_per_s']:.1f} -> {draft['draft_tokens_per_s']:.1f} tokens/s, "
             "one prompt at a time)")
    if max(repeats) / min(repeats) > checks.DISAGREE or (min(repeats) < 1 < max(repeats)):
        text += f"; the repeats disagree ({min(repeats):.2f}x to {max(repeats):.2f}x): {checks.UNSETTLED}"
    same, total = draft["identical"], draft["prompts"]
    text += (f"; outputs identical to the teacher's own on all {total} prompts" if same == total else
             f"; outputs differ from the teacher's own on {total - same} of {total} prompts (near-ties in "
             "the verifying pass's arithmetic)")
    return [checks.note("as a draft", text)]


def _bound(value: float | None) -> str:
    return "-" if value is None or abs(value) == float("inf") else f"{value:.2f}"


def _summary(distillation: bool, found: list[dict]) -> str:
    measured = [c for c in found if c["status"] in ("pass", "fail", "unsettled")]
    failed = [c["name"] for c in measured if c["status"] == "fail"]
    unsettled = [c["name"] for c in measured if c["status"] == "unsettled"]
    if failed:
        worth = "Not yet worth keeping" if distillation else "Fine-tuning did not pay"
    elif unsettled:
        worth = "Not settled"
    else:
        worth = "Distillation paid" if distillation else "Fine-tuning paid"
    passed = sum(c["status"] == "pass" for c in measured)
    missed = f"; missed: {', '.join(failed)}" if failed else ""
    open_ = f"; {checks.UNSETTLED}: {', '.join(unsettled)}" if unsettled else ""
    facts = ", ".join(c["short"] for c in measured)
    return f"{worth}: {passed} of {len(measured)} checks passed{missed}{open_} ({facts})"
