"""The top-k teacher cache through the real entry point: built once by --cache-teacher, trained
from with the teacher's directory gone, refused when it belongs to another run, resumed after a
SIGKILL mid-build, one clear line for a damaged file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from finetune_cli import main
from finetuner.teachers import topk_cache

ROOT = Path(__file__).resolve().parents[1]


def write_answers(directory: Path, teacher: Path, student: Path, data: Path, **settings) -> Path:
    answers = dict(approach="distillation", teacher=str(teacher), student=str(student), student_layers=None,
                   dataset=str(data), teacher_cache=str(directory / "cache"), teacher_top_k=8,
                   output_dir=str(directory / "out"), max_samples=32, max_length=64, epochs=2, batch_size=8,
                   gradient_accumulation=1, learning_rate=3e-3, benchmark=False, upload=False, seed=0)
    path = directory / "answers.yaml"
    path.write_text(yaml.safe_dump({**answers, **settings}))
    return path


def run(path: Path, *extra: str) -> int:
    return main(["--answers", str(path), "--defaults", "--yes", *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_llama, tiny_llama_small, qa_file):
    """A teacher directory of the user's, and the cache --cache-teacher built from it."""
    home = tmp_path_factory.mktemp("cached")
    teacher = Path(shutil.copytree(tiny_llama, home / "teacher"))
    path = write_answers(home, teacher, tiny_llama_small, qa_file)
    assert run(path, "--cache-teacher") == 0
    return home, path


def fresh_copy(built, tmp_path: Path, **settings) -> Path:
    """The built cache and teacher copied into tmp_path, with an answers file pointing at them."""
    home, _ = built
    shutil.copytree(home / "cache", tmp_path / "cache")
    shutil.copytree(home / "teacher", tmp_path / "teacher")
    answers = yaml.safe_load((home / "answers.yaml").read_text())
    return write_answers(tmp_path, tmp_path / "teacher", Path(answers["student"]), Path(answers["dataset"]),
                         **settings)


def test_cache_holds_the_teachers_top_k_per_training_row(built):
    from finetuner import models
    from finetuner.config import RunConfig
    from finetuner.data.preparing import prepare
    from finetuner.losses import select_targets
    from finetuner.objectives.topk import teacher_topk

    home, path = built
    assert not (home / "out" / "model").exists()  # --cache-teacher stops after the cache
    manifest = json.loads((home / "cache" / "manifest.json").read_text())
    shards = list((home / "cache").glob("shard-*.safetensors"))
    assert len(shards) == manifest["shards"] >= 1
    # On disk: the documented bytes per token plus only small headers and row offsets.
    on_disk = sum(p.stat().st_size for p in shards)
    assert manifest["counted_tokens"] * topk_cache.bytes_per_token(8) <= on_disk
    assert on_disk <= manifest["counted_tokens"] * topk_cache.bytes_per_token(8) + 2000 * len(shards)

    cfg = RunConfig(**{**yaml.safe_load(path.read_text()), "output_dir": str(home / "scratch")})
    tokenizer = models.load_tokenizer(cfg.student)
    rows = prepare(cfg, tokenizer).train
    cache = topk_cache.TopKCache(home / "cache")
    teacher = models.load_teacher(cfg.teacher, models.precision_policy())
    for row in (0, len(rows) - 1, 5):  # the last row, and rows out of order, map to their own entries
        ids = torch.tensor([rows[row]["input_ids"]])
        labels = torch.tensor([rows[row]["labels"]])
        mask, _ = select_targets(labels)
        with torch.inference_mode():
            logits = teacher(input_ids=ids).logits[:, :-1][mask]
        expected = teacher_topk(logits, 8, cfg.temperature)
        got = cache.entries_for_batch(torch.tensor([row]), labels)
        assert torch.equal(got.ids.long(), expected.ids)
        torch.testing.assert_close(got.logprobs.float(), expected.logprobs, atol=2e-2, rtol=1e-3)
        torch.testing.assert_close(got.tail, expected.tail, atol=1e-4, rtol=1e-4)
        # The tail draws: ids outside the top k, as many as documented, and the tail's negentropy.
        assert got.samples.shape == (len(expected.ids), topk_cache.TAIL_SAMPLES)
        assert not (got.samples[:, :, None] == expected.ids[:, None, :]).any()
        tempered = torch.log_softmax(logits.float() / cfg.temperature, -1)
        tail_p = tempered.exp().scatter(1, expected.ids, 0.0)
        torch.testing.assert_close(got.tail_negentropy, (tail_p * tempered).sum(-1), atol=1e-4, rtol=1e-3)
    # The kept teacher mass, measured on the first shard's rows, in the manifest and the plan.
    assert 0 < manifest["kept_mass"]["share"] < 1 and manifest["kept_mass"]["rows"] >= 1
    from finetuner.teachers.topk_quality import kept_mass_row

    assert "of the tempered teacher" in kept_mass_row(manifest)[1]


@pytest.mark.slow
@pytest.mark.parametrize("student_training", ["full", "lora"])
def test_training_with_the_teacher_directory_removed_after_cache_teacher(tmp_path, tiny_llama, tiny_llama_small,
                                                                         qa_file, capsys, student_training):
    teacher = Path(shutil.copytree(tiny_llama, tmp_path / "teacher"))
    path = write_answers(tmp_path, teacher, tiny_llama_small, qa_file, student_training=student_training, epochs=1)
    assert run(path, "--cache-teacher") == 0
    shutil.rmtree(teacher)
    capsys.readouterr()
    assert run(path) == 0
    out = capsys.readouterr().out
    assert "the teacher is not loaded" in out and "Loading teacher" not in out
    log = json.loads((tmp_path / "out" / "training_log.json").read_text())
    steps = [e for e in log["log_history"] if "loss" in e]
    assert len(steps) == 4 and all(e["kl"] > 0 for e in steps)  # 4 batches, KL from the cache
    assert (tmp_path / "out" / "model" / "config.json").is_file()


def test_plan_shows_the_expected_size_before_anything_runs(built, tmp_path, capsys):
    path = fresh_copy(built, tmp_path, teacher_cache=str(tmp_path / "new-cache"), teacher_top_k=16)
    assert run(path, "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "teacher cache" in plan and f"{topk_cache.bytes_per_token(16)} bytes a counted token" in plan
    assert not (tmp_path / "new-cache").exists()


@pytest.mark.parametrize("setting,fragment", [
    ({"teacher_top_k": 4}, "top_k: cache 8, this run 4"),
    ({"max_samples": 24}, "the tokenized training rows"),
    ({"temperature": 3.0}, "temperature: cache 2.0, this run 3.0"),
    ("retrained teacher", "the teacher's weights differ"),
])
def test_a_cache_built_for_another_run_is_refused(built, tmp_path, capsys, setting, fragment):
    path = fresh_copy(built, tmp_path, **(setting if isinstance(setting, dict) else {}))
    if setting == "retrained teacher":
        from conftest import build_llama

        from transformers import AutoTokenizer
        build_llama(tmp_path / "teacher", AutoTokenizer.from_pretrained(tmp_path / "teacher"), layers=4, seed=7)
    assert run(path) == 1
    err = capsys.readouterr().err
    assert "was built for another run" in err and fragment in err and "Traceback" not in err
    assert not (tmp_path / "out" / "checkpoints").exists()
    assert len(list((tmp_path / "cache").glob("shard-*"))) >= 1  # refused, never deleted without consent


def test_a_damaged_cache_file_gives_one_clear_line(built, tmp_path, capsys):
    path = fresh_copy(built, tmp_path)
    shard = tmp_path / "cache" / topk_cache.shard_name(0)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert run(path) == 1
    err = capsys.readouterr().err
    assert f"teacher cache file {shard} is damaged" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_build_killed_midway_resumes_where_it_stopped(built, tmp_path, capsys):
    home, _ = built
    path = fresh_copy(built, tmp_path, teacher_cache=str(tmp_path / "killed"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNER_CACHE_SHARD_ROWS": "1"}
    args = [sys.executable, str(ROOT / "finetune_cli.py"), "--answers", str(path), "--defaults", "--yes",
            "--cache-teacher"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cache = tmp_path / "killed"
    deadline = time.monotonic() + 60
    while not list(cache.glob("shard-*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*.safetensors")}
    total = json.loads((cache / "manifest.json").read_text())["shards"]
    assert 1 <= len(done) < total, (len(done), total)

    assert run(path, "--cache-teacher") == 0  # the same command again, in this process
    assert f"resuming: {len(done)} of {total} shards done" in capsys.readouterr().out
    assert all((cache / name).stat().st_mtime_ns == mtime for name, mtime in done.items())  # kept, not redone
    # The resumed cache holds what an uninterrupted build holds, row for row.
    resumed, straight = topk_cache.TopKCache(cache), topk_cache.TopKCache(home / "cache")
    rows = list(range(straight.manifest["rows"]))
    per_shard = straight.rows_per_shard
    counts = [int(straight._shard(r // per_shard).offsets[r % per_shard + 1]
                  - straight._shard(r // per_shard).offsets[r % per_shard]) for r in rows]
    assert all(torch.equal(a, b) for a, b in zip(resumed.entries(rows, counts), straight.entries(rows, counts)))


@pytest.mark.parametrize("setting,fragment", [
    ({"divergence": "reverse_kl"}, "supports forward_kl only"),
    ({"hidden_state_weight": 0.5}, "not hidden states"),
    ({"on_policy_fraction": 0.5}, "cannot score text it has never seen"),
])
def test_objectives_that_need_a_live_teacher_are_refused_with_the_cache(setting, fragment):
    from finetuner.config import RunConfig

    with pytest.raises(ValueError, match=fragment):
        RunConfig(approach="distillation", teacher_cache="cache", **setting)
    RunConfig(approach="distillation", **setting)  # fine without the cache


def test_eval_steps_with_the_cache_scores_held_out_ce_and_keeps_the_best(built, tmp_path):
    """The cache holds training rows only and no teacher is loaded: held-out evaluation is the student's
    own CE (the same number its model loss gives), with no divergence logged, and it picks the checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuner.config import RunConfig
    from finetuner.data.preparing import make_collator, prepare

    path = fresh_copy(built, tmp_path, eval_steps=2)
    assert run(path) == 0
    history = json.loads((tmp_path / "out" / "training_log.json").read_text())["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert len(evals) == 4 and all(e["eval_ce"] == pytest.approx(e["eval_loss"], abs=1e-3) for e in evals)
    assert not any("eval_kl" in e for e in history)

    cfg = RunConfig(**yaml.safe_load(path.read_text()))
    model_dir = tmp_path / "out" / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    held = prepare(cfg, tokenizer).eval
    batch = make_collator(tokenizer)([held[i] for i in range(len(held))])
    with torch.no_grad():
        loss = AutoModelForCausalLM.from_pretrained(model_dir)(**batch).loss
    assert float(loss) == pytest.approx(min(e["eval_loss"] for e in evals), rel=0.02)  # the best one was kept
