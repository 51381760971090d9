"""The plan's time estimate: measured by a probe step on this machine (tiny models built from their
configs, the run's own rows), and said to be calibrated where no probe runs."""

from __future__ import annotations

import dataclasses

import pytest

from finetuner import plan, probe, time_plan
from finetuner.config import RunConfig
from finetuner.recipe import Recipe


def distill(teacher, student, data, out, **settings) -> RunConfig:
    settings = {"benchmark": False, **settings}
    return RunConfig(approach="distillation", teacher=str(teacher), student=str(student), student_layers=None,
                     dataset=str(data), output_dir=str(out), max_samples=32, max_length=64, epochs=1, batch_size=4,
                     gradient_accumulation=2, **settings)


def test_probe_times_a_distillation_step_and_the_plan_says_it_measured(tiny_llama, tiny_llama_small, qa_file,
                                                                       tmp_path):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out")
    pre = plan.preflight(cfg)
    measured = probe.measure(cfg, pre.recipe, pre.data, pre.tokenizer, decode_rows=4)
    assert measured.flops_per_second > 0 and measured.optimizer_seconds > 0
    assert measured.decode_step_seconds > 0 and measured.spread >= 1.0 and measured.decode_rows == 4
    assert 0 < measured.decode_one_seconds
    estimate = plan.estimate(cfg, pre)
    assert estimate.how.startswith("measured: a probe step here ran") and estimate.seconds > 0
    facts = dict(plan.derived_facts(cfg, pre, estimate))
    assert "measured" in facts["estimated training time"]
    assert not (tmp_path / "out").exists()  # the probe writes nothing


def test_two_epochs_are_estimated_at_about_twice_one(tiny_llama, tiny_llama_small, qa_file, tmp_path):
    """The estimate is tokens x FLOPs / the measured rate + steps x the optimizer step: it scales with the work."""
    one = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out")
    pre = plan.preflight(one)
    rates = time_plan.Rates(1e9, 0.01, 1e-9, "test rates")

    def seconds(cfg):
        return time_plan.training_seconds(Recipe.of(cfg), pre.data, rates)

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
    assert any("fewer parameters than the teacher" in n and "size check wants at least 33% fewer" in n for n in notes)


# ---- every phase, and a probe that a busy machine can't fool ---------------------------------------

def test_the_plan_estimates_every_phase_with_a_total(tiny_llama, tiny_llama_small, qa_file, tmp_path):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out", benchmark=True, benchmark_samples=2,
                  max_new_tokens=8)
    pre = plan.preflight(cfg)
    estimate = time_plan.estimate(cfg, pre, time_plan.Rates(1e9, 0.01, 1e-9, "test rates"))
    names = [p.name for p in estimate.phases]
    assert names == ["model preparation", "training", "benchmark"], names
    assert all(p.seconds > 0 for p in estimate.phases)
    assert estimate.total == pytest.approx(sum(p.seconds for p in estimate.phases))
    facts = dict(plan.derived_facts(cfg, pre, estimate))
    for label in ("time: model preparation", "estimated training time", "time: benchmark", "estimated total"):
        assert label in facts, facts
    assert "3 models x 2 answers x up to 8 tokens" in facts["time: benchmark"]


def test_the_benchmark_and_a_local_teacher_writing_are_counted_in_decoding_steps(tiny_llama, tiny_llama_small,
                                                                               qa_file, tmp_path):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out", benchmark=True, benchmark_samples=3,
                  max_new_tokens=10, distillation_mode="responses", generation_max_new_tokens=16,
                  generation_batch_size=4)
    pre = plan.preflight(cfg)
    rates = time_plan.Rates(1e12, 0.0, 1e-9, "test rates")
    estimate = time_plan.estimate(cfg, pre, rates)
    writing = estimate.phase("teacher generation")
    prompts = pre.data.stats["train_rows"] + pre.data.stats["eval_rows"]
    teacher = time_plan._params(str(tiny_llama))
    assert writing.seconds == pytest.approx(-(-prompts // 4) * 16 * 1e-9 * teacher)
    longer = time_plan.estimate(dataclasses.replace(cfg, max_new_tokens=40), pre, rates).phase("benchmark")
    assert longer.seconds > 2 * estimate.phase("benchmark").seconds  # answers x max_new_tokens dominate


def test_a_teacher_cache_to_fill_is_its_own_phase(tiny_llama, tiny_llama_small, qa_file, tmp_path):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out", teacher_cache=str(tmp_path / "cache"))
    pre = plan.preflight(cfg)
    estimate = time_plan.estimate(cfg, pre, time_plan.Rates(1e9, 0.0, 1e-9, "test rates"))
    live = time_plan.estimate(dataclasses.replace(cfg, teacher_cache=None), plan.preflight(
        dataclasses.replace(cfg, teacher_cache=None)), time_plan.Rates(1e9, 0.0, 1e-9, "test rates"))
    assert estimate.phase("teacher cache").seconds > 0
    # Trained from the cache, the teacher's forward is paid once instead of every epoch.
    assert estimate.phase("training").seconds < live.phase("training").seconds


def test_the_probe_keeps_the_fastest_of_several_timings_and_says_when_they_disagree():
    timings = iter([3.0, 1.0, 2.0, 9.0, 9.0])
    assert probe.fastest(lambda: next(timings), least=3, most=5, budget=0.0) == (1.0, 3.0)
    steady = probe.Measured(1e11, 0.01, spread=1.1, decode_step_seconds=0.1, decode_rows=20)
    busy = dataclasses.replace(steady, spread=2.4)
    assert time_plan.measured_rates(steady, 10**8).notes == ()
    note = time_plan.measured_rates(busy, 10**8).notes[0]
    assert "varied 2.4x" in note and "fastest" in note
    assert time_plan.measured_rates(busy, 10**8).decode_seconds_per_param == pytest.approx(0.1 / 10**8)


def test_a_decoding_step_costs_by_its_rows_between_the_one_row_and_the_batch_timings():
    """The draft and the speed timings decode fewer rows than the answers: each stage is costed at its
    own rows, not at the batch's (the Quick start's benchmark was planned at 2.8x its measured time)."""
    measured = probe.Measured(1e11, 0.01, decode_step_seconds=0.2, decode_rows=20, decode_one_seconds=0.05)
    rates = time_plan.measured_rates(measured, 10**8)
    assert rates.decode_seconds(10**8, 20) == pytest.approx(0.2)
    assert rates.decode_seconds(10**8, 1) == pytest.approx(0.05)
    assert rates.decode_seconds(2 * 10**8, 1) == pytest.approx(0.1)  # scaled by parameters
    assert 0.05 < rates.decode_seconds(10**8, 8) < 0.2


def test_a_fine_tuning_plan_names_no_teacher(tiny_gpt2, monkeypatch):
    from finetuner import models

    monkeypatch.setattr(models, "cpu_precision_reason", lambda: "bf16 autocast, teacher in bf16 (forced)")
    fine_tuning = RunConfig(approach="fine-tuning", model=str(tiny_gpt2), output_dir="o")
    assert "teacher" not in plan.device_name(fine_tuning)
    assert "teacher in bf16" in plan.device_name(RunConfig(approach="distillation", output_dir="o"))


def test_under_two_processes_each_rank_plans_its_share_of_the_steps(tiny_llama, tiny_llama_small, qa_file, tmp_path,
                                                                     monkeypatch):
    cfg = dataclasses.replace(distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out"), max_steps=None)
    alone = plan.preflight(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in every rank
    pair = plan.preflight(cfg)
    rows = alone.data.stats["train_rows"]  # 28: 4 batches of 4 a rank, 2 steps of 2 accumulated
    assert (alone.recipe.steps_per_epoch(rows), pair.recipe.steps_per_epoch(rows)) == (4, 2)
    facts = dict(plan.derived_facts(cfg, pair, time_plan.TimeEstimate(phases=(), how="")))
    assert "x 2 processes" in facts["effective batch"]


def test_fsdp_launched_on_a_cpu_is_said_to_train_plain_ddp(tiny_llama, tiny_llama_small, qa_file, tmp_path,
                                                            monkeypatch):
    cfg = distill(tiny_llama, tiny_llama_small, qa_file, tmp_path / "out")
    assert not any("FSDP" in n for n in plan.plan_warnings(cfg, plan.preflight(cfg)))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    assert any("plain DDP" in n for n in plan.plan_warnings(cfg, plan.preflight(cfg)))
