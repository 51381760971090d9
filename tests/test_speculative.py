"""The student as its teacher's speculative draft, on a tiny teacher and its derived student; the
settings that refuse it before "Start?"; and the whole benchmark reporting it."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import build_llama, train_tokenizer
from finetuner import generation
from finetuner.benchmark import speculative
from finetuner.benchmark.run import run_benchmark
from finetuner.config import RunConfig

PROMPTS = ["What is 3 plus 4?", "What is 12 plus 19?", "The quick brown fox"]


@pytest.fixture(scope="module")
def pair(tiny_llama):
    from transformers import AutoModelForCausalLM

    from finetuner.models import derive_student

    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama)
    return teacher, derive_student(AutoModelForCausalLM.from_pretrained(tiny_llama), 2)


def test_assisted_generation_gives_the_teachers_own_greedy_output(pair, tokenizer):
    teacher, student = pair
    pad = generation.pad_id(tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        alone = generation.generate(teacher, [ids], 12, pad)
        drafted = generation.generate(teacher, [ids], 12, pad, assistant_model=student)
        assert drafted.tolist() == alone.tolist()


def test_the_draft_is_timed_beside_the_teacher_and_counts_acceptance(pair, tokenizer):
    teacher, student = pair
    found = speculative.measure(teacher, student, tokenizer, PROMPTS[:2], max_new_tokens=8, repeats=2)
    assert found["identical"] == found["prompts"] == 2
    assert 0 <= found["acceptance"] <= 1 and found["drafted"] > 0 and found["accepted"] <= found["drafted"]
    assert found["tokens"] == 16 and len(found["alone_s"]) == len(found["draft_s"]) == 2
    assert found["speedup"] > 0 and len(found["speedup_repeats"]) == 2
    # A draft identical to the teacher is always right.
    assert speculative.measure(teacher, copy.deepcopy(teacher), tokenizer, PROMPTS[:1], 8, repeats=1)["acceptance"] == 1.0


def test_an_unrelated_draft_is_accepted_less_often(pair, tokenizer):
    import torch

    teacher, student = pair
    stranger = copy.deepcopy(student)
    torch.manual_seed(0)
    with torch.no_grad():  # layers that no longer say what the teacher's would
        for name, weight in stranger.named_parameters():
            if ".layers." in name:
                weight.add_(torch.randn_like(weight))
    found = speculative.measure(teacher, stranger, tokenizer, PROMPTS, 12, repeats=1)
    assert found["acceptance"] < 1.0 and found["identical"] == 3  # still the teacher's output


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("other")
    return build_llama(directory / "model", train_tokenizer(directory / "tok", vocab_size=300), layers=2)


def test_speculative_true_is_refused_for_an_api_teacher_or_another_tokenizer(tiny_llama, other_tokenizer_model):
    with pytest.raises(ValueError, match="speculative_benchmark: true needs the teacher's weights"):
        RunConfig(approach="distillation", teacher="t", teacher_api_base="http://127.0.0.1:9/v1",
                  distillation_mode="responses", student=str(tiny_llama), student_layers=None,
                  speculative_benchmark="true")
    with pytest.raises(ValueError, match="shares the teacher's tokenizer"):
        RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(other_tokenizer_model),
                  student_layers=None, distillation_mode="responses", speculative_benchmark="true")
    # auto is never refused: it measures when it can.
    RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(other_tokenizer_model),
              student_layers=None, distillation_mode="responses")


def test_auto_skips_students_with_another_tokenizer(tokenizer, other_tokenizer_model):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(other_tokenizer_model)
    assert speculative.shares_tokenizer(tokenizer, tokenizer) and not speculative.shares_tokenizer(tokenizer, other)
    assert speculative.when("auto", True, False) == "the student's tokenizer differs from the teacher's"
    assert speculative.when("auto", False, True).startswith("the teacher answered from a file")
    assert speculative.when("auto", True, True) is None


@pytest.mark.slow  # about 20 s on 2 busy cores: every stage of the benchmark, twice
def test_the_benchmark_reports_the_draft_and_every_new_figure(tmp_path, pair, tokenizer, tiny_llama):
    teacher, student = pair
    rows = [{"prompt": f"What is {a} plus {b}?", "reference": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
            for a, b in [(3, 4), (12, 19), (5, 5)]]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
                    benchmark_samples=3, max_new_tokens=6)
    report = run_benchmark(cfg, tmp_path, [("teacher", teacher, tokenizer, tiny_llama),
                                           ("student after", student, tokenizer, None)])
    draft = report["speculative"]
    assert draft["prompts"] == 3 and draft["identical"] == 3 and 0 <= draft["acceptance"] <= 1
    assert report["task_metric"]["used"] and report["task_metric"]["checkable_share"] == 1.0
    for model in report["models"]:
        assert set(model["accuracy"]) == {"strict", "flexible"} and model["accuracy"]["flexible"]["n"] == 3
        assert len(model["speed_repeats"]) == 3 and model["tokens_per_s"] == max(model["speed_repeats"])
        assert {"final_answer", "rougeL", "loops"} <= set(model["samples"][0])
    notes = {c["name"]: c["text"] for c in report["verdict"]["checks"]}
    assert notes["as a draft"].startswith("· as a draft: the student makes the teacher")
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["speculative"] == draft and saved["models"][0]["accuracy"] == report["models"][0]["accuracy"]
    off = run_benchmark(RunConfig(**{**cfg.__dict__, "speculative_benchmark": "false"}), tmp_path,
                        [("teacher", teacher, tokenizer, tiny_llama), ("student after", student, tokenizer, None)])
    assert "speculative" not in off
