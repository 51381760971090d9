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


def _model(label, rl, params, speed, loops, answers=()):
    return ModelResult(label, {"rouge1": rl, "rouge2": rl / 2, "rougeL": rl}, parameters=params, size_on_disk_mb=1.0,
                       tokens_per_s=speed, peak_memory_mb=1.0, loop_rate=loops,
                       samples=[{"prompt": "q", "reference": "r", "generation": a} for a in answers])


def test_top1_agreement_is_the_share_of_reference_tokens_predicted_alike():
    assert top1_agreement([[1, 2, 3], [4]], [[1, 2, 9], [4]]) == 0.75
    assert top1_agreement([], []) == 0.0


def test_a_student_that_meets_every_target_passes_with_its_numbers():
    report = compare([_model("teacher", 0.20, 134_500_000, 20.0, 0.25), _model("student before", 0.05, 77_900_000, 33.0, 0.5),
                      _model("student after", 0.19, 77_900_000, 32.0, 0.125)], "distillation")
    result = report["verdict"]
    assert [c["name"] for c in result["checks"]] == ["quality", "speed", "size", "loops"]
    assert all(c["passed"] for c in result["checks"]) and result["passed"] == result["total"] == 4
    quality, speed, size, loops = result["checks"]
    assert quality["measured"] == 0.95 and "95% of the teacher's 0.200" in quality["text"]
    assert speed["measured"] == 1.6 and "1.60x" in speed["text"] and "32.0 vs 20.0" in speed["text"]
    assert size["measured"] == pytest.approx(0.4208, abs=1e-4) and "42% fewer parameters (77.9M vs 134.5M" in size["text"]
    assert loops["text"].startswith("✓ loops: 12% of answers loop vs the teacher's 25%")
    assert result["summary"].startswith("Distillation paid: 4 of 4 checks passed")


def test_a_looping_student_fails_even_when_rouge_looks_fine():
    # The student: high ROUGE-L from the right words in a loop.
    report = compare([_model("teacher", 0.20, 134_500_000, 20.0, 0.0),
                      _model("student after", 0.21, 81_400_000, 26.0, 0.75)], "distillation")
    checks = {c["name"]: c for c in report["verdict"]["checks"]}
    assert checks["quality"]["passed"] and not checks["loops"]["passed"] and not checks["speed"]["passed"]
    assert not checks["size"]["passed"]  # 15 of 30 layers: 60.5% of the parameters is 39.5% smaller, not 40%
    assert checks["loops"]["text"].startswith("✗")
    assert report["verdict"]["summary"].startswith(
        "Not yet worth keeping: 1 of 4 checks passed; missed: speed, size, loops (ROUGE-L 105% of the teacher's")


def test_fine_tuning_verdict_compares_with_the_base_model():
    report = compare([_model("base", 0.20, 10, 5.0, 0.5), _model("fine-tuned", 0.25, 10, 5.0, 0.25)], "fine-tuning")
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
