"""The whole recipe in one process, as a user runs it: train -> benchmark -> upload over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_pipeline_secret_token_123"


def run_cli(args, endpoint: str, token: str | None):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update({"HF_ENDPOINT": endpoint, "COLUMNS": "160", "HF_HOME": str(Path(args[-1]).parent / "hf-home")})
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, str(ROOT / "finetune_cli.py"), *args[:-1]], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def test_distill_benchmark_and_upload_end_to_end(tmp_path, tiny_llama, qa_file):
    out = tmp_path / "out"
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(
        approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama), student_layers=2,
        output_dir=str(out), dataset=str(qa_file), max_samples=48, max_length=64, epochs=1, batch_size=8,
        gradient_accumulation=1, save_steps=2, benchmark=True, benchmark_samples=4, max_new_tokens=8,
        upload=True, hub_repo="alice/tiny-student", hub_private=True)))

    with HubServer(token=TOKEN, user="alice") as hub:
        result = run_cli(["--answers", str(answers), "--defaults", "--yes", str(tmp_path / "x")], hub.url, TOKEN)
        assert result.returncode == 0, result.stdout + result.stderr
        uploaded = set(hub.repos["alice/tiny-student"].files)

    report = json.loads((out / "benchmark.json").read_text())
    assert [m["label"] for m in report["models"]] == ["teacher", "student before", "student after"]
    assert report["retained"] is not None
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "benchmark.json",
            "finetuner-answers.yaml"} <= uploaded
    assert not any(name.startswith("checkpoints") or name.endswith("optimizer.pt") for name in uploaded)
    assert TOKEN not in result.stdout + result.stderr
    assert list(out.glob("checkpoints/checkpoint-*/trainer_state.json"))  # checkpoints were written
    for path in out.rglob("*"):  # answers, logs, card, checkpoints (training_args.bin too), weights
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_failed_upload_keeps_the_model_and_prints_the_retry_command(tmp_path, tiny_llama, qa_file):
    out = tmp_path / "out"
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(
        approach="fine-tuning", model=str(tiny_llama), method="lora", output_dir=str(out), dataset=str(qa_file),
        max_samples=32, max_length=64, epochs=1, batch_size=8, benchmark=False, upload=True,
        hub_repo="alice/tiny-lora")))
    with HubServer(token=TOKEN, user="alice") as hub:
        result = run_cli(["--answers", str(answers), "--defaults", "--yes", str(tmp_path / "x")], hub.url,
                         "hf_wrong_token_456")
    assert result.returncode == 1
    assert "401" in result.stderr and f"--upload-only {out}" in result.stderr
    assert "Traceback" not in result.stderr and "hf_wrong_token_456" not in result.stdout + result.stderr
    assert (out / "model" / "model.safetensors").is_file()

    with HubServer(token=TOKEN, user="alice") as hub:
        retry = run_cli(["--upload-only", str(out), "--set", "hub_repo=alice/tiny-lora", str(tmp_path / "x")],
                        hub.url, TOKEN)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert "model.safetensors" in hub.repos["alice/tiny-lora"].files
