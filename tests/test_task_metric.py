"""task_metric's choice, exact match per answer, and the intervals the verdict's checks rest on."""

from __future__ import annotations

import json

import pytest

from finetuner.benchmark import task
from finetuner.benchmark.uncertainty import answers_to_settle, mean_interval, settle, share_spread, wilson
from finetuner.sources import builtin_dataset_file


@pytest.fixture(scope="module")
def gsm8k():
    with open(builtin_dataset_file("gsm8k")) as rows:
        return [json.loads(line) for line in rows][:40]


def test_auto_uses_exact_match_on_gsm8k_and_not_on_free_text(gsm8k):
    references = [row["answer"] for row in gsm8k]
    assert task.chosen("auto", references)["used"] and task.chosen("auto", references)["checkable_share"] == 1.0
    prose = ["A long answer with no marked final answer."] * 3 + references[:1]
    chosen = task.chosen("auto", prose)
    assert not chosen["used"] and "only 25%" in chosen["why"] and "task_metric exact_match" in chosen["why"]
    assert task.chosen("exact_match", prose)["used"] and not task.chosen("none", references)["used"]


def test_exact_match_scores_each_answer_and_keeps_what_was_extracted(gsm8k):
    references = [row["answer"] for row in gsm8k[:4]]
    answers = [references[0], "So the answer is 3.", "", references[3].split("####")[0]]  # the last: no #### line
    summary, details = task.score(answers, references)
    assert details[0]["strict_correct"] and details[0]["reference"] == "18"
    assert not details[2]["flexible_correct"] and details[2]["strict"] is None
    assert details[3]["strict"] is None and details[3]["flexible_correct"]  # the last number is the answer
    assert summary["strict"]["correct"] == 1 + (details[1]["strict_correct"]) and summary["flexible"]["n"] == 4
    assert summary["strict"]["stderr"] > 0


def test_wilson_intervals_match_hand_computed_values():
    low, high = wilson(20, 40)  # p = 0.5, n = 40: about ±15 points
    assert low == pytest.approx(0.3519, abs=1e-3) and high == pytest.approx(0.6481, abs=1e-3)
    assert wilson(0, 40)[0] == 0 and wilson(0, 40)[1] == pytest.approx(0.0876, abs=1e-3)
    mean, low, high = mean_interval([1.0, 3.0, 5.0])
    assert mean == 3 and high - mean == pytest.approx(1.96 * 2 / 3 ** 0.5)


def test_a_check_settles_only_when_the_interval_clears_the_target():
    assert settle(0.5, 0.7, 0.45, higher_is_better=True) is True
    assert settle(0.2, 0.4, 0.45, higher_is_better=True) is False
    assert settle(0.4, 0.6, 0.45, higher_is_better=True) is None
    assert settle(0.1, 0.4, 0.45, higher_is_better=False) is True
    assert settle(0.45, 0.6, 0.45, higher_is_better=True, strict=True) is None  # equal to the base is not better
    assert answers_to_settle(share_spread(0.55), 0.55, 0.45) == 96 and answers_to_settle(0.5, 0.45, 0.45) is None
