"""Task accuracy: exact match of each answer's final answer against the reference's (final_answer.py),
strict and flexible, with a standard error, as lm-evaluation-harness reports GSM8K.

task_metric auto uses it when nearly all benchmarked references have a checkable final answer
(`#### N`, "The answer is X", a lone number or letter); exact_match uses it whatever the share (an
uncheckable reference counts as a miss); none never does.
"""

from __future__ import annotations

from finetuner import final_answer

AUTO_SHARE = 0.9  # auto: at least this share of the references must have a checkable answer
EXTRACTION = ("strict: the last '#### X' line, else the last 'the answer is X' / 'Answer: X'; flexible: the "
              "strict answer, else the last number (for a letter reference, the last standalone letter A-E); "
              "both sides normalised: $, thousands commas, spaces and a trailing period dropped, numbers "
              "compared by value, text case-folded")


def chosen(setting: str, references: list[str]) -> dict:
    """What the report says about the task metric: {"setting", "used", "checkable_share", "why"}."""
    share = round(final_answer.checkable_share(references), 4)
    if setting == "none":
        used, why = False, "task_metric none"
    elif setting == "exact_match":
        used, why = True, "task_metric exact_match"
    elif share >= AUTO_SHARE:
        used, why = True, f"{share:.0%} of the references have a checkable final answer"
    else:
        used, why = False, (f"only {share:.0%} of the references have a checkable final answer "
                            f"(auto needs {AUTO_SHARE:.0%}); set task_metric exact_match to score them anyway")
    return {"setting": setting, "used": used, "checkable_share": share, "why": why, "extraction": EXTRACTION}


def score(answers: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    """Accuracy per extraction {"strict"|"flexible": {"accuracy", "stderr", "correct", "n"}}, and for
    each answer what was extracted: {"reference", "strict", "flexible", "strict_correct", "flexible_correct"}."""
    details = []
    for answer, reference in zip(answers, references):
        expected = final_answer.reference_answer(reference)
        letter = expected is not None and final_answer.is_letter(expected)
        hit_strict, hit_flexible = final_answer.matches(answer, reference)
        details.append({"reference": expected, "strict": final_answer.strict(answer),
                        "flexible": final_answer.flexible(answer, multiple_choice=letter),
                        "strict_correct": hit_strict, "flexible_correct": hit_flexible})
    summary = {}
    for kind in ("strict", "flexible"):
        hits = [d[f"{kind}_correct"] for d in details]
        accuracy, stderr = final_answer.mean_and_stderr(hits)
        summary[kind] = {"accuracy": round(accuracy, 4), "stderr": round(stderr, 4), "correct": sum(hits),
                         "n": len(hits)}
    return summary, details
