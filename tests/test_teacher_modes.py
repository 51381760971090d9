"""distillation_mode responses and hybrid, end to end from answers: a local teacher whose tokenizer
differs from the student's, a local teacher sharing it (hybrid), an API teacher behind a real
`transformers serve`, and questions written from documents."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import finetune_cli
from conftest import build_gpt2, train_tokenizer
from finetuner.teachers.response_cache import CACHE_FILE

TRAIN = {"approach": "distillation", "max_samples": 10, "eval_fraction": 0.2, "max_length": 64,
         "max_steps": 2, "batch_size": 2, "gradient_accumulation": 1, "save_steps": 1,
         "generation_max_new_tokens": 8, "generation_drop_incomplete": False, "benchmark": False,
         # An untrained teacher's greedy answer is a special token repeated; sampling writes some text.
         "generation_temperature": 1.0}


def run(tmp_path, answers: dict, *extra) -> int:
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump({**TRAIN, "output_dir": str(tmp_path / "out"), **answers}))
    return finetune_cli.main(["--answers", str(path), "--defaults", "--yes", *extra])


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory) -> Path:
    """A GPT-2 teacher with a tokenizer of its own (another vocabulary)."""
    directory = tmp_path_factory.mktemp("other-teacher")
    return build_gpt2(directory, train_tokenizer(directory, vocab_size=300), layers=2)


@pytest.mark.slow
def test_responses_from_a_teacher_with_another_tokenizer(tmp_path, other_teacher, tiny_llama_small, qa_file, capsys):
    answers = {"teacher": str(other_teacher), "student": str(tiny_llama_small), "dataset": str(qa_file)}
    # logits mode refuses before "Start?", and the hint names the mode that works.
    assert run(tmp_path, {**answers, "distillation_mode": "logits"}) == 1
    err = capsys.readouterr().err
    assert "tokenizers differ" in err and "distillation_mode responses" in err
    assert not (tmp_path / "out" / "model").exists()

    assert run(tmp_path, {**answers, "distillation_mode": "responses"}, "--overwrite") == 0
    lines = [json.loads(line) for line in (tmp_path / "out" / CACHE_FILE).read_text().splitlines()]
    assert len(lines) == 10 and {line["finish_reason"] for line in lines} <= {"stop", "length"}
    assert lines[0]["teacher"] == {"model": str(other_teacher), "api_base": None}
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    log = json.loads((tmp_path / "out" / "training_log.json").read_text())
    assert log["completed"]


@pytest.mark.slow
def test_hybrid_trains_logits_on_the_teachers_responses(tmp_path, tiny_llama, tiny_llama_small, qa_file, capsys):
    answers = {"teacher": str(tiny_llama), "student": str(tiny_llama_small), "dataset": str(qa_file),
               "distillation_mode": "hybrid", "generation_batch_size": 4}
    assert run(tmp_path, answers) == 0
    assert len((tmp_path / "out" / CACHE_FILE).read_text().splitlines()) == 10
    log = json.loads((tmp_path / "out" / "training_log.json").read_text())
    assert any("kl" in entry for entry in log["log_history"])  # the logits term ran
    out = capsys.readouterr().out
    assert out.count("Loading teacher") == 1 and "reused for its logits" in out  # loaded once, not twice


@pytest.fixture(scope="module")
def served_teacher(tiny_llama, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 serving a copy of the tiny Llama that samples (greedy, the
    untrained model writes only newlines, which the filter drops as empty)."""
    import shutil
    import socket

    model = tmp_path_factory.mktemp("served") / "tiny-llama"
    shutil.copytree(tiny_llama, model)
    (model / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 1.0, "top_k": 0}))

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(["transformers", "serve", str(model), "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        server.kill()
        pytest.fail("transformers serve did not start")
    yield f"http://127.0.0.1:{port}/v1", str(model)
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_responses_from_transformers_serve_trains_and_benchmarks(tmp_path, served_teacher, tiny_llama_small, qa_file):
    base, served = served_teacher
    answers = {"teacher_api_base": base, "teacher": served, "student": str(tiny_llama_small),
               "dataset": str(qa_file), "distillation_mode": "responses", "benchmark": True,
               "benchmark_samples": 2, "max_new_tokens": 4}
    assert run(tmp_path, answers) == 0
    out = tmp_path / "out"
    assert len((out / CACHE_FILE).read_text().splitlines()) == 10
    assert len((out / "teacher_heldout.jsonl").read_text().splitlines()) == 2
    report = json.loads((out / "benchmark.json").read_text())
    assert [m["label"] for m in report["models"]][0] == "teacher (API, cached answers)"


@pytest.mark.slow
def test_questions_from_documents_end_to_end(tmp_path, tiny_llama_small):
    from teacher_server import TeacherServer

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pods.md").write_text("# Pods\n\nA pod is the smallest deployable unit.\n\nContainers share its network.\n")
    (docs / "services.txt").write_text("A service exposes pods on a stable address. Clients reach it by name.\n")
    with TeacherServer() as server:
        answers = {"teacher_api_base": server.base, "teacher": "ok", "student": str(tiny_llama_small),
                   "dataset": str(docs), "distillation_mode": "responses", "questions_per_chunk": 2,
                   "student_training": "qlora",
                   "generation_max_new_tokens": 24, "eval_fraction": 0.25}
        assert run(tmp_path, answers) == 0
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / CACHE_FILE).read_text().splitlines()]
    kinds = [line["kind"] for line in lines]
    assert kinds.count("questions") == 2 and kinds.count("answer") == 4  # 2 chunks x 2 questions
    pairs = [json.loads(line) for line in (out / "document_qa.jsonl").read_text().splitlines()]
    assert len(pairs) == 4 and all(p["answer"].removeprefix("According to the text, ") in p["context"] for p in pairs)
    assert (out / "adapter" / "adapter_config.json").is_file()  # a QLoRA student
    assert (out / "model" / "config.json").is_file()  # merged into a full-precision copy
