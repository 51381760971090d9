"""Two processes on CPU (gloo) through torchrun, as a user launches them: the ranks share the rows,
stay identical step by step, match one process on the same global batch, and write one output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from finetune_cli import main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
PER_RANK_BATCH = 4


def distill_answers(tmp_path: Path, name: str, teacher: Path, student: Path, data: Path, batch: int,
                    **settings) -> Path:
    answers = dict(approach="distillation", teacher=str(teacher), student=str(student), student_layers=None,
                   dataset=str(data), output_dir=str(tmp_path / name), max_samples=40, max_length=64, epochs=1,
                   max_steps=STEPS, batch_size=batch, gradient_accumulation=1, learning_rate=3e-3,
                   save_steps=2, benchmark=False, upload=False, seed=0)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**answers, **settings}))
    return path


def torchrun(answers: Path, trace_dir: Path) -> subprocess.CompletedProcess:
    """The CLI on two CPU processes under torchrun, as a user launches it; each rank traces its steps."""
    # fp32 on every CPU: bf16 autocast's rounding over differently padded batches, which Adam's first
    # step (lr 0 no longer) turns into whole-lr moves of near-zero gradients, is not what these tests compare.
    env = {**os.environ, "FINETUNER_TRACE_DIR": str(trace_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "FINETUNER_CPU_DTYPE": "fp32"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "finetune_cli.py", "--answers", str(answers), "--defaults", "--yes"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def read_trace(directory: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (directory / f"rank{rank}.jsonl").read_text().splitlines()]


def distance(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5


def first_ce(out: Path) -> float:
    history = json.loads((out / "training_log.json").read_text())["log_history"]
    return next(entry["ce"] for entry in history if "ce" in entry)


def weights(directory: Path, rank: int, step: int) -> dict[str, torch.Tensor]:
    return torch.load(directory / f"rank{rank}-step{step}.pt")


@pytest.mark.slow
def test_torchrun_two_processes_distill_like_one(tmp_path, tiny_llama, tiny_llama_small, qa_file, monkeypatch):
    two = distill_answers(tmp_path, "two", tiny_llama, tiny_llama_small, qa_file, PER_RANK_BATCH)
    run = torchrun(two, tmp_path / "trace2")

    # The same global batch on one process.
    monkeypatch.setenv("FINETUNER_TRACE_DIR", str(tmp_path / "trace1"))
    monkeypatch.setenv("FINETUNER_CPU_DTYPE", "fp32")
    one = distill_answers(tmp_path, "one", tiny_llama, tiny_llama_small, qa_file, 2 * PER_RANK_BATCH)
    assert main(["--answers", str(one), "--defaults", "--yes"]) == 0

    ranks = [read_trace(tmp_path / "trace2", r) for r in (0, 1)]
    single = read_trace(tmp_path / "trace1", 0)
    assert [len(r) for r in ranks] == [STEPS, STEPS] and len(single) == STEPS
    assert all(line["world_size"] == 2 for r in ranks for line in r)  # two processes really ran
    for step, (a, b, s) in enumerate(zip(*ranks, single), start=1):
        assert len(a["rows"]) == len(b["rows"]) == PER_RANK_BATCH
        assert not set(a["rows"]) & set(b["rows"]), f"step {step}: both ranks trained on the same rows"
        assert sorted(a["rows"] + b["rows"]) == sorted(s["rows"]), f"step {step}: not the single run's batch"
        assert a["weights_sha1"] == b["weights_sha1"], f"step {step}: the ranks' weights differ"
        # One process on the same global batch: the same weights, up to float rounding over differently
        # padded batches, far below what a step moves them.
        start, w_one, w_two = (weights(tmp_path / d, 0, st) for d, st in (("trace1", 0), ("trace1", step),
                                                                            ("trace2", step)))
        assert w_two.keys() == w_one.keys()
        moved = distance(w_one, start)
        assert distance(w_two, w_one) <= 0.01 * moved, (step, distance(w_two, w_one), moved)
    assert moved > 0.1  # the steps trained
    # The logged CE is the global batch's (summed over ranks), not rank 0's share.
    assert first_ce(tmp_path / "two") == pytest.approx(first_ce(tmp_path / "one"), rel=0.02)

    out = tmp_path / "two"
    log = json.loads((out / "training_log.json").read_text())
    assert log["completed"] and log["log_history"][-1]["step"] == STEPS
    # Exactly one set of outputs: the same files a single process writes.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert (out / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert run.stdout.count("Model saved in") == 1 and run.stdout.count("training: ") == 1


@pytest.mark.slow
def test_torchrun_trains_the_hidden_state_projection_and_scores_held_out_rows_like_one(
        tmp_path, tiny_llama, tokenizer, qa_file, monkeypatch):
    """A narrower student's projection is synchronised like the student (it trains inside it), and
    eval_ce / eval_kl are the means over every process's held-out rows, as eval_loss is."""
    from conftest import build_llama

    narrow = build_llama(tmp_path / "narrow", tokenizer, layers=2, hidden=32, seed=3)
    settings = dict(hidden_state_weight=0.5, eval_steps=STEPS, eval_fraction=0.2)
    torchrun(distill_answers(tmp_path, "two", tiny_llama, narrow, qa_file, PER_RANK_BATCH, **settings),
             tmp_path / "trace2")
    monkeypatch.setenv("FINETUNER_TRACE_DIR", str(tmp_path / "trace1"))
    monkeypatch.setenv("FINETUNER_CPU_DTYPE", "fp32")
    one = distill_answers(tmp_path, "one", tiny_llama, narrow, qa_file, 2 * PER_RANK_BATCH, **settings)
    assert main(["--answers", str(one), "--defaults", "--yes"]) == 0

    ranks = [read_trace(tmp_path / "trace2", r) for r in (0, 1)]
    assert all(a["weights_sha1"] == b["weights_sha1"] for a, b in zip(*ranks)), "the ranks' weights differ"
    start, w_one, w_two = (weights(tmp_path / d, 0, st) for d, st in (("trace1", 0), ("trace1", STEPS),
                                                                        ("trace2", STEPS)))
    projection = [k for k in w_one if "hidden_state_projection" in k]
    assert projection and w_two.keys() == w_one.keys()
    moved = distance({k: w_one[k] for k in projection}, {k: start[k] for k in projection})
    assert moved > 0 and distance({k: w_two[k] for k in projection}, {k: w_one[k] for k in projection}) <= 0.01 * moved

    def held_out(name: str) -> dict:
        history = json.loads((tmp_path / name / "training_log.json").read_text())["log_history"]
        return next(e for e in history if "eval_loss" in e)

    for key in ("eval_loss", "eval_ce", "eval_kl"):
        assert held_out("two")[key] == pytest.approx(held_out("one")[key], rel=0.02), key


@pytest.mark.parametrize("build", ["llama", "gpt2", "llama-lora", "no-logits-to-keep"])
def test_final_hidden_states_through_the_wrapper(tiny_llama, tiny_gpt2, build):
    """The wrapper's forward gives what the LM head sees, without computing [B, L, V] logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from finetuner.logits import decoder_outputs

    class ClassicLlama(LlamaForCausalLM):  # a forward without logits_to_keep, as in older remote code
        def forward(self, input_ids=None, attention_mask=None, use_cache=None, output_hidden_states=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                                   output_hidden_states=output_hidden_states)

    loader = ClassicLlama if build == "no-logits-to-keep" else AutoModelForCausalLM
    model = loader.from_pretrained(tiny_gpt2 if build == "gpt2" else tiny_llama)
    ids = torch.randint(5, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    heads = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: heads.append(tuple(out.shape)))
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])) \
        if build == "llama-lora" else model
    hidden = decoder_outputs(wrapped, ids, mask).last_hidden_state
    torch.testing.assert_close(hidden, expected)
    vocab = model.config.vocab_size
    assert heads == [(2, 12, vocab) if build == "no-logits-to-keep" else (2, 0, vocab)]


@pytest.mark.slow
def test_torchrun_responses_mode_asks_the_teacher_once(tmp_path, tiny_gpt2, tiny_llama_small, qa_file):
    """A teacher that writes: the main process writes the responses, the other rank reads its cache
    (no prompt is paid for twice), and both ranks train on different rows in step."""
    answers = dict(approach="distillation", teacher=str(tiny_gpt2), student=str(tiny_llama_small),
                   student_layers=None, dataset=str(qa_file), output_dir=str(tmp_path / "out"),
                   distillation_mode="responses", max_samples=12, eval_fraction=0.2, max_length=64, max_steps=2,
                   batch_size=2, gradient_accumulation=1, save_steps=10, generation_max_new_tokens=8,
                   generation_drop_incomplete=False, generation_temperature=1.0, benchmark=False, upload=False)
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump(answers))
    run = torchrun(path, tmp_path / "trace")
    from finetuner.teachers.response_cache import CACHE_FILE

    requests = [json.loads(line) for line in (tmp_path / "out" / CACHE_FILE).read_text().splitlines()]
    assert len(requests) == 12  # 10 training + 2 held-out prompts, each asked once
    ranks = [read_trace(tmp_path / "trace", r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]
    for a, b in zip(*ranks):
        assert a["world_size"] == b["world_size"] == 2
        assert a["rows"] and not set(a["rows"]) & set(b["rows"])
        assert a["weights_sha1"] == b["weights_sha1"]
    assert run.stdout.count("Model saved in") == 1


@pytest.mark.slow
def test_torchrun_trains_the_sft_baseline_on_every_rank_then_benchmarks_once(tmp_path, tiny_llama, tiny_llama_small,
                                                                             qa_file):
    """The baseline is trained like the student, by both ranks in step; then the ranks part and the main
    process benchmarks alone (before, rank 1 left after the student and rank 0's baseline lost its peer)."""
    from finetuner import artifacts
    from finetuner.benchmark.comparison import REPORT_FILE

    torchrun(distill_answers(tmp_path, "out", tiny_llama, tiny_llama_small, qa_file, 2, max_steps=2, sft_baseline=True,
                             benchmark=True, benchmark_samples=2, max_new_tokens=4), tmp_path / "trace")
    assert (tmp_path / "out" / artifacts.SFT_BASELINE_DIR / "model" / "model.safetensors").is_file()
    ranks = [read_trace(tmp_path / "trace", r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [4, 4]  # the student's 2 steps, then the baseline's 2, on each rank
    assert all(a["weights_sha1"] == b["weights_sha1"] for a, b in zip(*ranks))
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["sft_baseline"] in [m["label"] for m in report["models"]]
