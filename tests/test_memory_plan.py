"""The memory plan: estimated from configs alone, checked against the measured peak of real runs."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest

from finetuner.config import RunConfig
from finetuner.memory_plan import estimate, rows_for, shape_of

ROOT = Path(__file__).resolve().parents[1]


def llama_shape(hidden=256, layers=6, intermediate=1024, vocab=400):
    from transformers import LlamaConfig

    return shape_of(LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                tie_word_embeddings=True))


def distill(**settings) -> RunConfig:
    return RunConfig(**{"approach": "distillation", "teacher": "t", "student": "s", "student_layers": None,
                        "batch_size": 8, "max_length": 512, **settings})


def test_each_choice_lowers_what_it_should(monkeypatch):
    from finetuner import models

    monkeypatch.setenv(models.CPU_DTYPE_ENV, "bf16")  # a CPU with fast bf16: the teacher in 2 bytes, as on a GPU
    teacher, student = llama_shape(layers=12), llama_shape(layers=6)
    base = estimate(distill(), student, teacher)
    assert student.params == pytest.approx(6 * (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 1024 + 2 * 256)
                                           + 400 * 256 + 256)  # exact Llama count, tied head once
    assert base.student == 4 * student.params and base.training_state == 12 * student.params
    assert base.teacher == 2 * teacher.params
    ckpt = estimate(distill(gradient_checkpointing=True), student, teacher)
    assert ckpt.activations < base.activations / 3 and ckpt.student == base.student
    lora = estimate(distill(student_training="lora"), student, teacher)
    assert lora.training_state < base.training_state / 20
    four_bit = estimate(distill(teacher_quantization="4bit"), student, teacher)
    assert four_bit.teacher < base.teacher / 3
    half_batch = estimate(distill(batch_size=4, gradient_accumulation=8), student, teacher)
    assert half_batch.activations < base.activations * 0.55
    sharded = estimate(distill(), student, teacher, "cuda", shards=4)
    assert sharded.training_state == base.training_state // 4 and sharded.teacher == base.teacher  # not sharded
    qlora = estimate(RunConfig(method="qlora", quantization="4bit", model="m"), student)
    lora_ft = estimate(RunConfig(method="lora", model="m"), student)
    assert qlora.student < lora_ft.student


def test_when_it_does_not_fit_the_choices_do():
    teacher, student = llama_shape(layers=12), llama_shape(layers=6)
    cfg = distill()
    need = estimate(cfg, student, teacher, "cuda")
    free = int((need.total - need.activations * 0.6) / 0.9)  # too little for these activations
    rows = dict(rows_for(cfg, student, teacher, "cuda", free))
    assert "DOES NOT FIT" in rows["memory: total"]
    choices = [value for key, value in rows_for(cfg, student, teacher, "cuda", free) if key == "memory: to fit, try"]
    assert any(c.startswith("batch_size ") and "gradient_accumulation" in c for c in choices), choices
    assert any(c.startswith("gradient_checkpointing: true") for c in choices), choices
    for choice in choices:  # every offered change really fits by the same estimate
        if choice.startswith("batch_size "):
            batch, steps = int(choice.split()[1]), int(choice.split()[4])
            assert estimate(dataclasses.replace(cfg, batch_size=batch, gradient_accumulation=steps), student,
                            teacher, "cuda").total <= 0.9 * free
            assert batch * steps == cfg.batch_size * cfg.gradient_accumulation
    plenty = dict(rows_for(cfg, student, teacher, "cuda", 10 * need.total))
    assert plenty["memory: total"].endswith("fits") and "memory: to fit, try" not in plenty


def test_a_huge_teacher_gets_quantisation_and_gpus_offered_with_a_warning():
    teacher, student = llama_shape(hidden=2048, layers=48, intermediate=8192), llama_shape(layers=6)
    cfg = distill(student_training="lora", gradient_checkpointing=True)
    need = estimate(cfg, student, teacher, "cuda")
    choices = [v for k, v in rows_for(cfg, student, teacher, "cuda", int(need.total * 0.75)) if k == "memory: to fit, try"]
    assert any(c.startswith("teacher_quantization: 8bit") and "worse teacher" in c for c in choices), choices


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory) -> Path:
    """Rows that fill max_length, so every batch is as large as the plan assumes."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    rows = [{"question": f"What is {i} plus {i}?",
             "answer": " ".join(f"{rng.randint(1, 20)} plus {rng.randint(1, 20)}" for _ in range(120))}
            for i in range(48)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def mid_llama(tmp_path_factory, tokenizer) -> Path:
    """A Llama wide enough that weights and activations, not the runtime, set the peak."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("mid") / "mid-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024,
                                 num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=512, tie_word_embeddings=True,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_estimate_within_25_percent_of_the_measured_peak(tmp_path, mid_llama, long_rows):
    """A full-weight distillation (LoRA fine-tuning and the built-in model: benchmarks/memory_plan.py)."""
    settings = dict(approach="distillation", student_layers=3, batch_size=16)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from memory_plan import estimated, measured_peak  # the benchmark's own measurement

    answers = dict(dataset=str(long_rows), teacher=str(mid_llama), student=str(mid_llama), model=str(mid_llama),
                   max_samples=48, max_length=256, epochs=1, max_steps=1, benchmark=False, upload=False,
                   gradient_accumulation=1, save_steps=1000, **settings)
    peak, guess = measured_peak(answers, tmp_path), estimated(answers)
    assert abs(guess / peak - 1) <= 0.25, (guess / 1e9, peak / 1e9)


def test_the_memory_plan_counts_the_teacher_at_the_precision_it_will_run_in(monkeypatch):
    # A CPU trains in bf16 only where it multiplies faster in it (models.precision_policy); in fp32
    # the teacher's weights and the student's activations take twice the bytes.
    from finetuner import models

    student, teacher = llama_shape(layers=3), llama_shape()
    monkeypatch.setenv(models.CPU_DTYPE_ENV, "bf16")
    half = estimate(distill(), student, teacher, "cpu")
    monkeypatch.setenv(models.CPU_DTYPE_ENV, "fp32")
    full = estimate(distill(), student, teacher, "cpu")
    assert full.teacher == 2 * half.teacher and full.activations > 1.5 * half.activations
    assert dict(rows_for(distill(), student, teacher, "cpu", 10**12))["memory: teacher weights"].endswith("(fp32)")
