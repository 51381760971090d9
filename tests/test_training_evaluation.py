"""Held-out evaluation during training (eval_steps, load_best_model_at_end) and experiment
tracking (report_to) through the Trainer's own integrations, on tiny real models."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

from finetuner import artifacts, tracking
from finetuner.benchmark.scores import perplexity
from finetuner.config import RunConfig
from finetuner.recipe import Recipe
from finetuner.training import train


def _eval_losses(out) -> list[tuple[int, float]]:
    history = artifacts.read_training_log(out)["log_history"]
    return [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]


@pytest.mark.slow
def test_eval_steps_keeps_the_best_checkpoint_when_the_last_is_worse(tmp_path, tiny_llama, qa_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # 8 training rows, 32 epochs at a high learning rate: the student overfits, and its held-out
    # loss ends well above its lowest (by about 1 nat in bf16 and in fp32, whichever the CPU runs).
    out = tmp_path / "out"
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
                    alpha=1.0, output_dir=str(out), dataset=str(qa_file), max_samples=12, eval_fraction=0.34,
                    max_length=64, batch_size=8, gradient_accumulation=1, learning_rate=0.03, max_steps=32,
                    eval_steps=4, benchmark=False)
    train(cfg, Recipe.of(cfg))

    losses = _eval_losses(out)
    assert [step for step, _ in losses] == list(range(4, 33, 4))
    best_step, best = min(losses, key=lambda sl: sl[1])
    last_step, last = losses[-1]
    assert best_step != last_step and last > best  # the run this test is about
    # The saved model is the best checkpoint's: its held-out loss, measured afresh, is the best one.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    # (training may have evaluated under bf16 autocast, this runs in fp32: they agree to about 3e-3)
    measured = math.log(perplexity(model, tokenizer, artifacts.read_heldout(out), cfg.max_length))
    assert abs(measured - best) < 1e-2 < abs(measured - last)


def _distill_reporting_to(report_to: str, out, tiny_llama, qa_file) -> list[dict]:
    """Four distillation steps, evaluated at steps 2 and 4, tracked by `report_to`; the Trainer's log."""
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
                    output_dir=str(out), dataset=str(qa_file), max_samples=24, max_length=64, batch_size=8,
                    gradient_accumulation=1, max_steps=4, eval_steps=2, early_stopping_patience=3,
                    report_to=report_to, benchmark=False)
    train(cfg, Recipe.of(cfg))
    return artifacts.read_training_log(out)["log_history"]


def _assert_tracked(rows: list[dict], history: list[dict]):
    """A tracker's rows (the Trainer's logs, keyed `train/loss`, `eval/kl`, ... with `train/global_step`)
    hold the training and held-out losses of training_log.json, step by step."""
    tracked = {(r["train/global_step"], "eval/loss" in r): r for r in rows if "train/loss" in r or "eval/loss" in r}
    expected = {(e["step"], "eval_loss" in e): e for e in history if "loss" in e or "eval_loss" in e}
    steps = [(1, False), (2, False), (2, True), (3, False), (4, False), (4, True)]  # (step, held out)
    assert sorted(tracked) == sorted(expected) == steps
    for (step, held_out), e in expected.items():
        for name in ("loss", "ce", "kl"):
            key = f"eval/{name}" if held_out else f"train/{name}"
            assert tracked[step, held_out][key] == pytest.approx(e[f"eval_{name}" if held_out else name], rel=1e-6)


@pytest.mark.slow
def test_report_to_tensorboard_writes_events_with_held_out_ce_and_kl(tmp_path, tiny_llama, qa_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    history = _distill_reporting_to("tensorboard", out, tiny_llama, qa_file)

    # Distillation's held-out loss comes with its parts, for the loss curve.
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


@pytest.mark.slow
def test_report_to_trackio_stores_train_and_held_out_losses_locally(tmp_path, tiny_llama, qa_file, monkeypatch):
    # Trackio reads TRACKIO_DIR once, when the Trainer's callback first imports it; nothing goes to a Space.
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    history = _distill_reporting_to("trackio", out, tiny_llama, qa_file)

    # One SQLite file per project; a row per Trainer log, its metrics as JSON.
    with closing(sqlite3.connect(tmp_path / "trackio" / f"{tracking.PROJECT}.db")) as db:
        stored = db.execute("SELECT run_name, metrics FROM metrics ORDER BY id").fetchall()
    assert {run for run, _ in stored} == {out.name}
    _assert_tracked([json.loads(metrics) for _, metrics in stored], history)


@pytest.mark.slow
def test_report_to_wandb_writes_an_offline_run_beside_the_model(tmp_path, tiny_llama, qa_file, monkeypatch):
    import wandb

    # No key, mode, folder or project: finetuner itself runs W&B offline, in OUT/wandb, under project
    # `finetuner`. Empty counts as unset, and setting them here has monkeypatch undo what report_to writes.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.setenv(name, "")
    # wandb-core's own logs and W&B's settings would otherwise live under ~/.cache and ~/.config.
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "out"
    history = _distill_reporting_to("wandb", out, tiny_llama, qa_file)
    # finetuner ends the run when training ends (the Trainer's callback would leave it open until the
    # process exits), so an sft_baseline trained next gets a run of its own.
    assert wandb.run is None

    [run_dir] = (out / "wandb").glob("offline-run-*")  # (an online run's folder is run-*)
    # W&B's own reader of the run's .wandb log: one JSON record per line.
    listing = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in listing.splitlines()]
    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert (run["project"], run["display_name"]) == (tracking.PROJECT, out.name)
    _assert_tracked([r["history"]["item"] for r in records if r["type"] == "history"], history)


def test_early_stopping_needs_eval_steps_and_report_to_needs_its_package():
    with pytest.raises(ValueError, match="early_stopping_patience: counts evaluations"):
        RunConfig(early_stopping_patience=2)
    with pytest.raises(ValueError, match="eval_steps: needs held-out rows"):
        RunConfig(eval_steps=10, eval_fraction=0.0)
    with pytest.raises(ValueError, match="report_to: must be one of"):
        RunConfig(report_to="mlflow")
