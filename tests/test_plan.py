"""The plan's time estimate: measured by a probe step on this machine (tiny models built from their
configs, the run's own rows), and said to be calibrated where no probe runs."""

from __future__ import annotations

import dataclasses

import pytest

from finetuner import plan, probe
from finetuner.config import RunConfig
from finetuner.recipe import Recipe


def distill(teacher, student, data, out, **settings) -> RunConfig:
    return RunConfig(approach="distillation", teacher=str(teacher), student=str(student), student_layers=None,
                     dataset=str(data), output_dir=str(out), max_samples=32, max_length=64, epochs=1, batch_size=4,
                     gradient_accumulation=2, benchmark=False, **settings)


def test_probe_times_a_distillation_step_and_the_plan_says_it_measured(tiny_llama, tiny_llama_small, qa_file,
                                                                       tmp_path):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out")
    pre = plan.preflight(cfg)
    measured = probe.measure(cfg, pre.recipe, pre.data, pre.tokenizer)
    assert measured.flops_per_second > 0 and measured.optimizer_seconds > 0
    estimate = plan.estimate(cfg, pre)
    assert estimate.how.startswith("measured: a probe step here ran") and estimate.seconds > 0
    facts = dict(plan.derived_facts(cfg, pre, estimate))
    assert "measured" in facts["estimated training time"]
    assert not (tmp_path / "out").exists()  # the probe writes nothing


def test_two_epochs_are_estimated_at_about_twice_one(tiny_llama, tiny_llama_small, qa_file, tmp_path):
    """The estimate is tokens x FLOPs / the measured rate + steps x the optimizer step: it scales with the work."""
    one = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out")
    pre = plan.preflight(one)
    rate, optimizer = 1e9, 0.01
    def seconds(cfg):
        return plan._seconds(Recipe.of(cfg), pre.data, rate, optimizer)

    assert seconds(dataclasses.replace(one, epochs=2)) == pytest.approx(2 * seconds(one))
    assert seconds(dataclasses.replace(one, alpha=1.0)) < seconds(one)  # alpha 1 loads no teacher


def test_lora_fine_tuning_is_probed_through_its_adapter(tiny_gpt2, qa_file, tmp_path):
    cfg = RunConfig(approach="fine-tuning", model=str(tiny_gpt2), method="lora", dataset=str(qa_file),
                    output_dir=str(tmp_path / "out"), max_samples=32, max_length=64, epochs=1, batch_size=4,
                    benchmark=False)
    estimate = plan.estimate(cfg, plan.preflight(cfg))
    assert estimate.how.startswith("measured") and estimate.seconds > 0


def test_without_a_probe_the_plan_says_the_estimate_is_calibrated_and_why(tiny_llama, tiny_llama_small, qa_file,
                                                                          tmp_path, monkeypatch):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out")
    pre = plan.preflight(cfg)
    dry = plan.estimate(cfg, pre, dry_run=True)
    assert dry.how.startswith("calibrated") and "a dry run times nothing" in dry.how and dry.seconds > 0
    monkeypatch.setattr(probe, "MEMORY_SHARE", 0.0)  # as if the models would not fit beside what is loaded
    big = plan.estimate(cfg, pre)
    assert big.how.startswith("calibrated") and "GB to probe" in big.how


def test_the_plan_warns_when_the_student_cannot_pass_the_verdicts_size_check(tiny_llama, tiny_llama_small, qa_file,
                                                                            tmp_path):
    # 3 of the tiny teacher's 4 layers: 22% fewer parameters; the 2-layer student has 43% fewer.
    cfg = dataclasses.replace(distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out"), benchmark=True)
    assert not any("size check" in n for n in plan.plan_warnings(cfg, plan.preflight(cfg)))
    cut = dataclasses.replace(cfg, student=str(tiny_llama), student_layers=3)
    notes = plan.plan_warnings(cut, plan.preflight(cut))
    assert any("fewer parameters than the teacher" in n and "size check wants at least 40% fewer" in n for n in notes)
