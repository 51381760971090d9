"""Fidelity, loop rate and the verdict, on hand-made generations and reports."""

from __future__ import annotations

import json

import pytest

from finetuner.benchmark.comparison import compare
from finetuner.benchmark.measure import ModelResult
from finetuner.benchmark.run import run_benchmark
from finetuner.benchmark.scores import rouge, top1_agreement
from finetuner.config import RunConfig
from finetuner.benchmark.verdict import verdict


def _model(label, rl, params, speed, loops, n=40, correct=None, scores=None, repeats=None, rl_values=None):
    """A result of n answers: `loops` of them loop (a count, or a share of n), `correct` of them right
    (exact match), judged `scores`; every answer scores `rl` ROUGE-L unless rl_values says otherwise."""
    looping = round(loops * n) if isinstance(loops, float) else loops
    samples = []
    for i in range(n):
        sample = {"prompt": f"q{i}", "reference": "#### 1", "generation": "a", "loops": i < looping,
                  "rougeL": rl_values[i] if rl_values else rl}
        if correct is not None:
            sample["final_answer"] = {"reference": "1", "strict": None, "flexible": None,
                                      "strict_correct": i < correct, "flexible_correct": i < correct}
        if scores is not None:
            sample["judge"] = {"score": scores[i], "reason": "r"}
        samples.append(sample)
    accuracy = None if correct is None else {kind: {"accuracy": correct / n, "stderr": 0.0, "correct": correct, "n": n}
                                             for kind in ("strict", "flexible")}
    judged = None if scores is None else {"mean": sum(v for v in scores if v) / len([v for v in scores if v]),
                                          "low": 1.0, "high": 5.0, "scored": len([v for v in scores if v]),
                                          "unscored": 0}
    return ModelResult(label, {"rouge1": rl, "rouge2": rl / 2, "rougeL": rl}, parameters=params, size_on_disk_mb=1.0,
                       tokens_per_s=speed, peak_memory_mb=1.0, loop_rate=looping / n, samples=samples,
                       accuracy=accuracy, judge=judged, speed_repeats=repeats or [speed, speed * 0.98, speed * 0.97])


def _checks(report):
    return {c["name"]: c for c in report["verdict"]["checks"]}


def test_top1_agreement_is_the_share_of_reference_tokens_predicted_alike():
    assert top1_agreement([[1, 2, 3], [4]], [[1, 2, 9], [4]]) == 0.75
    assert top1_agreement([], []) == 0.0


def test_a_student_that_meets_every_target_passes_with_its_numbers():
    report = compare([_model("teacher", 0.20, 134_500_000, 20.0, 10), _model("student before", 0.05, 77_900_000, 33.0, 20),
                      _model("student after", 0.19, 77_900_000, 32.0, 0)], "distillation")
    result = report["verdict"]
    assert [c["name"] for c in result["checks"]] == ["quality", "speed", "size", "loops"]
    assert all(c["passed"] for c in result["checks"]) and result["passed"] == result["total"] == 4
    quality, speed, size, loops = result["checks"]
    assert quality["measured"] == 0.95 and "95% of the teacher's 0.200" in quality["text"]
    assert speed["measured"] == 1.6 and "1.60x" in speed["text"] and "32.0 vs 20.0" in speed["text"]
    assert size["measured"] == pytest.approx(0.4208, abs=1e-4) and "42.1% fewer parameters (77.9M of 134.5M" in size["text"]
    assert loops["text"].startswith("✓ loops: 0% of answers loop (95% CI 0%-9%) vs the teacher's 25%")
    assert result["summary"].startswith("Distillation paid: 4 of 4 checks passed")


def test_a_looping_student_fails_even_when_rouge_looks_fine():
    # The student: high ROUGE-L from the right words in a loop.
    report = compare([_model("teacher", 0.20, 134_500_000, 20.0, 0),
                      _model("student after", 0.21, 100_000_000, 26.0, 30)], "distillation")
    checks = _checks(report)
    assert checks["quality"]["passed"] and not checks["loops"]["passed"] and checks["speed"]["passed"] is False
    assert checks["size"]["passed"] is False
    assert checks["loops"]["text"].startswith("✗")
    assert report["verdict"]["summary"].startswith(
        "Not yet worth keeping: 1 of 4 checks passed; missed: speed, size, loops (ROUGE-L 105% of the teacher's")


def test_the_size_check_says_what_it_compares_without_rounding_onto_the_target():
    # 20 of SmolLM2-135M's 30 layers: 26.5% fewer; 15 of 30: 39.68% fewer.
    report = compare([_model("teacher", 0.2, 134_515_008, 20.0, 0), _model("student after", 0.2, 98_850_816, 40.0, 0)],
                     "distillation")
    size = _checks(report)["size"]
    assert size["passed"] is False and "26.5% fewer parameters" in size["text"] and "target ≥ 33% fewer" in size["text"]
    report = compare([_model("teacher", 0.2, 134_515_008, 20.0, 0), _model("student after", 0.2, 81_141_696, 40.0, 0)],
                     "distillation")
    size = _checks(report)["size"]
    assert size["passed"] is True and "39.7% fewer parameters" in size["text"]


def test_loop_rates_four_answers_apart_on_40_are_not_measurable_and_say_what_would_settle_them():
    # README's evidence: 55% vs 45% failed on one machine, 45% vs 45% passed on another.
    for mine, verdict_start in ((22, "Not yet worth keeping"), (18, "Not settled")):
        report = compare([_model("teacher", 0.2, 134_500_000, 20.0, 18),
                          _model("student after", 0.2, 100_000_000 if mine == 22 else 60_000_000, 40.0, mine)],
                         "distillation")
        loops = _checks(report)["loops"]
        assert loops["passed"] is None and loops["status"] == "unsettled"
        assert "not measurable at this sample size" in loops["text"]
        assert report["verdict"]["summary"].startswith(verdict_start)
        assert "not measurable at this sample size: loops" in report["verdict"]["summary"]
    assert "about 96 answers would settle it" in _checks(compare(
        [_model("teacher", 0.2, 10, 20.0, 18), _model("student after", 0.2, 5, 40.0, 22)], "distillation"))["loops"]["text"]
    assert "no number of answers settles a tie" in loops["text"]


def test_quality_uses_accuracy_when_the_task_has_final_answers():
    metric = {"task_metric": {"used": True}}
    teacher = _model("teacher", 0.2, 10, 20.0, 0, correct=20)
    cases = {36: True, 2: False, 19: None}  # 90%, 5%, 47.5% against a target of 45%
    for correct, passed in cases.items():
        report = compare([teacher, _model("student after", 0.1, 5, 40.0, 0, correct=correct)], "distillation", metric)
        quality = _checks(report)["quality"]
        assert quality["passed"] is passed and quality["text"].startswith(f"{'✓✗–'[[True, False, None].index(passed)]} "
                                                                          "quality: accuracy")
    assert "of the teacher's 50% (target ≥ 90%, i.e. ≥ 45%)" in quality["text"] and "answers would settle it" in quality["text"]
    # Without the task metric in use, the same results are judged by ROUGE-L.
    assert "ROUGE-L" in _checks(compare([teacher, _model("student after", 0.1, 5, 40.0, 0, correct=36)],
                                        "distillation"))["quality"]["text"]


def test_a_teacher_near_zero_on_the_task_is_said_in_words_and_quality_falls_to_the_next_measure():
    report = compare([_model("teacher", 0.2, 10, 20.0, 0, correct=1),
                      _model("student after", 0.19, 5, 40.0, 0, correct=0)], "distillation", {"task_metric": {"used": True}})
    checks = _checks(report)
    assert checks["accuracy"]["status"] == "note" and checks["accuracy"]["passed"] is None
    assert "the teacher solves 2% of these" in checks["accuracy"]["text"]
    assert "accuracy cannot separate the models" in checks["accuracy"]["text"]
    assert "ROUGE-L" in checks["quality"]["text"] and checks["quality"]["passed"] is True
    assert report["verdict"]["total"] == 4  # the note is not a check


def test_the_judge_decides_quality_without_a_task_metric_and_its_means_are_a_note():
    teacher = _model("teacher", 0.2, 10, 20.0, 0, scores=[5, 4] * 20)
    student = _model("student after", 0.1, 5, 40.0, 0, scores=[2, 1] * 20)
    report = compare([teacher, student], "distillation", {"judge": {"model": "grader", "status": "ok", "unscored": 0}})
    checks = _checks(report)
    assert checks["quality"]["passed"] is False and "judge score 1.50" in checks["quality"]["text"]
    assert checks["judge"]["text"].startswith("· judge: grader's mean score, 1-5: teacher 4.50")


def test_speed_repeats_that_disagree_or_straddle_the_target_are_not_measurable():
    teacher = _model("teacher", 0.2, 10, 20.0, 0, repeats=[20.0, 20.0, 20.0])
    wide = _model("student after", 0.2, 5, 40.0, 0, repeats=[40.0, 24.0, 30.0])
    straddle = _model("student after", 0.2, 5, 31.0, 0, repeats=[31.0, 29.0, 30.5])
    assert "the repeats disagree (1.20x to 2.00x)" in _checks(compare([teacher, wide], "distillation"))["speed"]["text"]
    speed = _checks(compare([teacher, straddle], "distillation"))["speed"]
    assert speed["passed"] is None and "straddle the target" in speed["text"] and "1.55x" in speed["text"]


def test_the_student_as_a_draft_is_a_note_with_speedup_and_acceptance():
    draft = {"speculative": {"prompts": 4, "speedup": 1.6, "speedup_repeats": [1.6, 1.55, 1.58], "acceptance": 0.71,
                             "teacher_tokens_per_s": 30.0, "draft_tokens_per_s": 48.0, "identical": 4}}
    report = compare([_model("teacher", 0.2, 10, 20.0, 0), _model("student after", 0.2, 5, 40.0, 0)], "distillation", draft)
    note = _checks(report)["as a draft"]["text"]
    assert note.startswith("· as a draft: the student makes the teacher 1.60x faster (acceptance 71%")
    assert "identical to the teacher's own on all 4 prompts" in note


def test_beating_plain_fine_tuning_is_a_paired_difference():
    teacher = _model("teacher", 0.3, 10, 20.0, 0)
    sft = _model("SFT baseline", 0.2, 5, 40.0, 0, rl_values=[0.2, 0.1] * 20)
    better = _model("student after", 0.3, 5, 40.0, 0, rl_values=[0.3, 0.2] * 20)
    same = _model("student after", 0.2, 5, 40.0, 0, rl_values=[0.1, 0.2] * 20)
    assert _checks(compare([teacher, sft, better], "distillation"))["beats plain fine-tuning"]["passed"] is True
    tie = _checks(compare([teacher, sft, same], "distillation"))["beats plain fine-tuning"]
    assert tie["passed"] is None and "paired on 40 prompts" in tie["text"]


def test_fine_tuning_verdict_compares_with_the_base_model():
    report = compare([_model("base", 0.20, 10, 5.0, 20), _model("fine-tuned", 0.25, 10, 5.0, 0)], "fine-tuning")
    assert [c["passed"] for c in report["verdict"]["checks"]] == [True, True]
    assert verdict({"models": [report["models"][0]]}) is None  # nothing to compare with


def test_an_api_teachers_answers_file_is_scored_and_used_for_fidelity(tmp_path, tiny_llama, tokenizer):
    from transformers import AutoModelForCausalLM

    rows = [{"prompt": f"What is {a} plus {b}?", "reference": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
            for a, b in [(3, 4), (12, 19), (5, 5), (7, 1)]]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = ["3 plus 4 is 7.", "12 plus 19 is 31, 12 plus 19 is 31, 12 plus 19 is 31", "5 plus 5 is 10.",
               "It is 8."]  # one loop in four
    # Written in another order: answers are matched by prompt.
    (tmp_path / "teacher_heldout.jsonl").write_text("".join(
        json.dumps({"prompt": r["prompt"], "response": t}) + "\n" for r, t in reversed(list(zip(rows, teacher)))))
    cfg = RunConfig(approach="distillation", teacher="http://127.0.0.1:9/v1", student=str(tiny_llama),
                    student_layers=None, dataset="gsm8k", benchmark_samples=4, max_new_tokens=6)
    student = AutoModelForCausalLM.from_pretrained(tiny_llama)
    report = run_benchmark(cfg, tmp_path, [("teacher", teacher, None, None),
                                           ("student after", student, tokenizer, tiny_llama)])

    scored, after = report["models"]
    assert scored["source"] == "answers file" and scored["parameters"] is None and scored["tokens_per_s"] is None
    assert scored["loop_rate"] == 0.25
    assert scored["rouge"]["rougeL"] == pytest.approx(rouge(teacher, [r["reference"] for r in rows])["rougeL"], abs=1e-4)
    generations = [s["generation"] for s in after["samples"]]
    assert after["fidelity_rougeL"] == pytest.approx(rouge(generations, teacher)["rougeL"], abs=1e-4)
    assert after["top1_agreement"] is None  # no teacher weights, no teacher tokens
    checks = {c["name"]: c for c in report["verdict"]["checks"]}
    assert checks["speed"]["passed"] is None and checks["size"]["passed"] is None
    assert "of 2 checks passed" in report["verdict"]["summary"]
