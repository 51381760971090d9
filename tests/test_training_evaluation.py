"""Held-out evaluation during training (eval_steps, load_best_model_at_end) and experiment
tracking (report_to) through the Trainer's own integrations, on tiny real models."""

from __future__ import annotations

import json
import math

import pytest

from finetuner import artifacts
from finetuner.benchmark import perplexity
from finetuner.config import RunConfig
from finetuner.trainer import LLMFineTuner


def _eval_losses(out) -> list[tuple[int, float]]:
    history = artifacts.read_training_log(out)["log_history"]
    return [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]


@pytest.mark.slow
def test_eval_steps_keeps_the_best_checkpoint_when_the_last_is_worse(tmp_path, tiny_llama, qa_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # 8 training rows, 20 epochs at a high learning rate: the student overfits, and its
    # held-out loss, lowest at step 16, is higher again at step 20.
    out = tmp_path / "out"
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
                    alpha=1.0, output_dir=str(out), dataset=str(qa_file), max_samples=12, eval_fraction=0.34,
                    max_length=64, batch_size=8, gradient_accumulation=1, learning_rate=0.03, max_steps=20,
                    eval_steps=4, benchmark=False)
    LLMFineTuner(cfg).train_distillation()

    losses = _eval_losses(out)
    assert [step for step, _ in losses] == [4, 8, 12, 16, 20]
    best_step, best = min(losses, key=lambda sl: sl[1])
    last_step, last = losses[-1]
    assert best_step != last_step and last > best  # the run this test is about
    # The saved model is the best checkpoint's: its held-out loss, measured afresh, is the best one.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    # (training evaluated under bf16 autocast, this in fp32: they agree to about 1e-3)
    measured = math.log(perplexity(model, tokenizer, artifacts.read_heldout(out), cfg.max_length))
    assert abs(measured - best) < 2e-3 < abs(measured - last)


@pytest.mark.slow
def test_report_to_tensorboard_writes_events_with_held_out_ce_and_kl(tmp_path, tiny_llama, qa_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
                    output_dir=str(out), dataset=str(qa_file), max_samples=24, max_length=64, batch_size=8,
                    gradient_accumulation=1, max_steps=4, eval_steps=2, early_stopping_patience=3,
                    report_to="tensorboard", benchmark=False)
    LLMFineTuner(cfg).train_distillation()

    # Distillation's held-out loss comes with its parts, for the loss curve.
    history = artifacts.read_training_log(out)["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4]
    for e in evals:
        assert e["eval_loss"] == pytest.approx(0.5 * e["eval_ce"] + 0.5 * 4.0 * e["eval_kl"], rel=1e-3)

    event_files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files
    reader = EventAccumulator(str(event_files[0].parent))
    reader.Reload()
    scalars = reader.Tags()["scalars"]
    assert {"train/loss", "train/ce", "train/kl", "eval/loss", "eval/ce", "eval/kl"} <= set(scalars)
    assert [e.step for e in reader.Scalars("eval/loss")] == [2, 4]
    assert reader.Scalars("eval/loss")[0].value == pytest.approx(evals[0]["eval_loss"], rel=1e-5)


def test_early_stopping_needs_eval_steps_and_report_to_needs_its_package():
    with pytest.raises(ValueError, match="early_stopping_patience: counts evaluations"):
        RunConfig(early_stopping_patience=2)
    with pytest.raises(ValueError, match="eval_steps: needs held-out rows"):
        RunConfig(eval_steps=10, eval_fraction=0.0)
    with pytest.raises(ValueError, match="report_to: must be one of"):
        RunConfig(report_to="mlflow")
