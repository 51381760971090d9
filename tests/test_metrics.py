"""Loop detection on hand-made generations."""

from finetuner.benchmark.scores import has_loop, loop_rate


def test_a_repeated_clause_is_a_loop_whatever_its_punctuation():
    assert has_loop("She has 70 gold, she has 70 gold, she has 70 gold")
    assert has_loop("He can mine with 120, 120, he can mine with 120, he can mine with 120.")


def test_an_answer_that_repeats_a_phrase_twice_or_repeats_short_words_is_not_a_loop():
    assert not has_loop("She has 70 gold. Then she has 70 gold more, so 140 in all.")
    assert not has_loop("1 + 1 + 1 + 1 = 4")  # five words: no 4-gram can occur three times
    assert not has_loop("")


def test_loop_rate_is_the_share_of_looping_answers():
    answers = ["a b c d a b c d a b c d", "The answer is 12.", "x y z w, x y z w, x y z w", "fine"]
    assert loop_rate(answers) == 0.5
    assert loop_rate([]) == 0.0
