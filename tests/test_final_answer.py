"""Exact match of final answers: strict and flexible extraction on real GSM8K rows and edge cases."""

import json

import pytest

from finetuner.final_answer import checkable_share, flexible, matches, mean_and_stderr, reference_answer, strict
from finetuner.sources import builtin_dataset_file


@pytest.fixture(scope="module")
def gsm8k():
    with open(builtin_dataset_file("gsm8k")) as rows:
        return [json.loads(line) for line in rows][:200]


def test_every_gsm8k_reference_has_a_checkable_answer(gsm8k):
    assert checkable_share([row["answer"] for row in gsm8k]) == 1.0
    assert reference_answer(gsm8k[0]["answer"]) == "18"


def test_a_reference_matches_itself_and_not_its_neighbour(gsm8k):
    answers = [row["answer"] for row in gsm8k]
    assert all(matches(a, a) == (True, True) for a in answers)
    assert not any(matches(a, b)[0] for a, b in zip(answers, answers[1:]) if reference_answer(a) != reference_answer(b))


@pytest.mark.parametrize("response, expected_strict, expected_flexible", [
    ("She pays $1,234.\n#### 1,234", "1234", "1234"),
    ("#### $18.00", "18", "18"),
    ("The answer is 18.", "18", "18"),
    ("The final answer is -3", "-3", "-3"),
    ("first try\n#### 5\nno wait\n#### 7", "7", "7"),   # several #### lines: the last is final
    ("So she has 3 + 4 = 7 apples.", None, "7"),         # nothing marked: only flexible finds it
    ("I cannot tell.", None, None),
    ("The answer is (B).", "b", "b"),
    ("She owes #### -5.", "-5", "-5"),                    # negative, with a trailing period
    ("The answer is $1,000.", "1000", "1000"),           # $ and a thousands comma
    ("1,234 apples and then 56.", None, "56"),           # flexible: the last number, not the first
])
def test_extraction_edge_cases(response, expected_strict, expected_flexible):
    assert strict(response) == expected_strict
    assert flexible(response) == expected_flexible


def test_multiple_choice_letters_and_short_references():
    assert matches("Looking at the options, (C) fits best.", "C") == (False, True)
    assert matches("Answer: c", "C") == (True, True)
    assert matches("It is 1,000", "1000") == (False, True)
    assert reference_answer("a long free-text reference with no marked answer") is None
    assert matches("anything", "a long free-text reference") == (False, False)


def test_standard_error_is_the_sample_one():
    mean, stderr = mean_and_stderr([True] * 10 + [False] * 30)
    assert mean == 0.25 and stderr == pytest.approx((0.25 * 0.75 / 39) ** 0.5)
    assert mean_and_stderr([]) == (0.0, 0.0)
