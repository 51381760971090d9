"""End-to-end training of tiny models through the wizard's answers file, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from finetune_cli import main

ROOT = Path(__file__).resolve().parents[1]


def answers_file(tmp_path: Path, **settings) -> Path:
    base = dict(output_dir=str(tmp_path / "out"), max_samples=64, max_length=64, epochs=3, batch_size=8,
                gradient_accumulation=1, learning_rate=3e-3, benchmark=False, upload=False, seed=0)
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump({**base, **settings}))
    return path


def run_wizard(path: Path, *extra: str) -> int:
    return main(["--answers", str(path), "--defaults", "--yes", *extra])


def losses(out: Path) -> list[float]:
    log = json.loads((out / "training_log.json").read_text())
    assert log["completed"] is True
    return [entry["loss"] for entry in log["log_history"] if "loss" in entry]


def assert_loss_falls(out: Path) -> None:
    values = losses(out)
    assert len(values) >= 6
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3, values


def assert_reloads_and_generates(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer("What is 3 plus 4?", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize("method,extra", [
    ("lora", {}),
    ("qlora", {"quantization": "4bit"}),
    ("qlora", {"quantization": "8bit"}),
])
def test_fine_tuning_methods_train_and_save(tmp_path, tiny_llama, qa_file, method, extra):
    path = answers_file(tmp_path, approach="fine-tuning", model=str(tiny_llama), method=method,
                        dataset=str(qa_file), **extra)
    assert run_wizard(path) == 0
    out = tmp_path / "out"
    assert_loss_falls(out)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "finetuner-answers.yaml").is_file() and (out / "heldout.jsonl").is_file()
    assert_reloads_and_generates(out / "model")


def test_adalora_ranks_really_adapt(tmp_path, tiny_llama, qa_file):
    path = answers_file(tmp_path, approach="fine-tuning", model=str(tiny_llama), method="adalora",
                        dataset=str(qa_file), epochs=4, adalora_init_r=6, adalora_target_r=2)
    assert run_wizard(path) == 0
    out = tmp_path / "out"
    assert_loss_falls(out)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    ranks = [sum(pattern) for pattern in (config.get("rank_pattern") or {}).values()]
    assert ranks, "AdaLoRA never allocated ranks (update_and_allocate not called)"
    assert min(ranks) < 6, ranks  # budget moved: some modules lost rank
    assert_reloads_and_generates(out / "model")


@pytest.mark.parametrize("student_training", ["full", "lora"])
def test_distillation_trains_a_derived_student(tmp_path, tiny_llama, qa_file, student_training):
    path = answers_file(tmp_path, approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama),
                        student_layers=2, student_training=student_training, dataset=str(qa_file))
    assert run_wizard(path) == 0
    out = tmp_path / "out"
    assert_loss_falls(out)
    log = json.loads((out / "training_log.json").read_text())["log_history"]
    assert all("ce" in e and "kl" in e for e in log if "loss" in e), "CE and KL are logged separately"
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert_reloads_and_generates(out / "model")


def test_distillation_with_a_separate_student(tmp_path, tiny_llama, tiny_llama_small, qa_file):
    path = answers_file(tmp_path, approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama_small),
                        student_layers=None, dataset=str(qa_file), alpha=0.0, epochs=2)
    assert run_wizard(path) == 0
    assert_reloads_and_generates(tmp_path / "out" / "model")


def test_mismatched_tokenizers_fail_before_weights_load(tmp_path, tiny_llama, qa_file, capsys):
    from conftest import build_llama, train_tokenizer

    other = build_llama(tmp_path / "other", train_tokenizer(tmp_path / "other-tok", vocab_size=300))
    path = answers_file(tmp_path, approach="distillation", teacher=str(tiny_llama), student=str(other),
                        student_layers=None, dataset=str(qa_file), distillation_mode="logits")
    assert run_wizard(path) == 1
    err = capsys.readouterr().err
    assert "tokenizer" in err.lower() and "Traceback" not in err
    assert "distillation_mode responses" in err  # the hint names the mode that works with any tokenizer
    assert not (tmp_path / "out" / "checkpoints").exists()


def _cli(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, str(ROOT / "finetune_cli.py"), *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_llama, qa_file):
    settings = dict(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
                    dataset=str(qa_file), epochs=1, max_steps=16, batch_size=4, gradient_accumulation=2)
    straight = answers_file(tmp_path / "a", **settings) if (tmp_path / "a").mkdir() is None else None
    interrupted = answers_file(tmp_path / "b", **settings) if (tmp_path / "b").mkdir() is None else None

    done = _cli(["--answers", str(straight), "--defaults", "--yes"])
    assert done.wait(timeout=180) == 0, done.stdout.read()

    proc = _cli(["--answers", str(interrupted), "--defaults", "--yes"])
    for line in proc.stdout:
        if line.startswith("step 5/"):
            proc.send_signal(signal.SIGINT)
            break
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, output
    assert "Traceback" not in output
    assert "--resume" in output  # the exact command that resumes
    assert not (tmp_path / "b" / "out" / "model").exists()

    resumed = _cli(["--answers", str(tmp_path / "b" / "out" / "finetuner-answers.yaml"), "--resume", "--yes"])
    output = resumed.stdout.read()
    assert resumed.wait(timeout=180) == 0, output
    assert "Resuming from" in output

    expected = load_file(tmp_path / "a" / "out" / "model" / "model.safetensors")
    actual = load_file(tmp_path / "b" / "out" / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow  # three kills at random points and resumes (about 40 s); test_interrupted_run_resumes_to_the_same_weights stays in the quick set
def test_sigkill_at_random_points_then_resume_matches(tmp_path, tiny_llama, qa_file):
    """SIGKILL gives no chance to save: resume must pick the newest *complete* checkpoint."""
    import random

    settings = dict(approach="fine-tuning", model=str(tiny_llama), method="lora", dataset=str(qa_file),
                    epochs=1, max_steps=12, batch_size=4, gradient_accumulation=1, save_steps=1)
    (tmp_path / "a").mkdir()
    done = _cli(["--answers", str(answers_file(tmp_path / "a", **settings)), "--defaults", "--yes"])
    assert done.wait(timeout=180) == 0, done.stdout.read()
    expected = load_file(tmp_path / "a" / "out" / "model" / "model.safetensors")

    rng = random.Random(1)
    for attempt in range(2):
        run_dir = tmp_path / f"k{attempt}"
        run_dir.mkdir()
        proc = _cli(["--answers", str(answers_file(run_dir, **settings)), "--defaults", "--yes"])
        kill_after = f"step {rng.randint(2, 9)}/"
        for line in proc.stdout:
            if line.startswith(kill_after):
                time.sleep(rng.random() * 0.3)  # land anywhere, mid-save included
                proc.kill()
                break
        proc.wait(timeout=60)
        resumed = _cli(["--answers", str(run_dir / "out" / "finetuner-answers.yaml"), "--resume", "--yes"])
        output = resumed.stdout.read()
        assert resumed.wait(timeout=180) == 0, output
        actual = load_file(run_dir / "out" / "model" / "model.safetensors")
        for name in expected:
            torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6,
                                       msg=f"{name} after kill at {kill_after}: {output}")


def test_resume_without_a_checkpoint_says_so(tmp_path, tiny_llama, qa_file, capsys):
    path = answers_file(tmp_path, approach="fine-tuning", model=str(tiny_llama), dataset=str(qa_file))
    assert run_wizard(path, "--resume") == 1
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_step_one_never_trains_at_learning_rate_zero(tmp_path, tiny_llama, qa_file):
    """transformers' linear warmup gives its first step lr 0, and warmup_steps=0.03 rounded up to a
    whole step: a 4-step run lost a quarter of its training. Short runs now start at the peak."""
    path = answers_file(tmp_path, approach="fine-tuning", model=str(tiny_llama), dataset=str(qa_file), method="lora",
                        max_steps=4, epochs=1)
    assert run_wizard(path) == 0
    log = json.loads((tmp_path / "out" / "training_log.json").read_text())["log_history"]
    rates = [entry["learning_rate"] for entry in log if "loss" in entry]
    assert len(rates) == 4 and rates[0] == pytest.approx(3e-3) and all(rate > 0 for rate in rates)


@pytest.mark.parametrize("total", [1, 4, 33, 34, 100, 1000])
def test_warmup_is_a_share_of_the_real_steps_and_never_starts_at_zero(total):
    from finetuner.training import schedule

    warmup = schedule.warmup_steps(total)
    assert warmup == int(0.03 * total)  # none below 34 steps
    factors = [schedule.factor(step, warmup, total) for step in range(total)]
    assert all(0 < f <= 1 for f in factors) and max(factors) == 1.0
    assert factors == sorted(factors[:warmup]) + sorted(factors[warmup:], reverse=True)

