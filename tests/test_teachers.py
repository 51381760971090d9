"""Teachers that write: the generation cache, an API teacher against a real server on 127.0.0.1
that misbehaves on demand (tests/teacher_server.py), and the resumable generate stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import finetune_cli
from finetuner.teachers.response_cache import CACHE_FILE, ResponseCache, Reply, Request
from teacher_server import TeacherServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-very-secret-123"


def cli(tmp_path, student, dataset, teacher, base, *extra, out="out"):
    """Run the wizard in-process from --set answers: API teacher, responses mode, generation only."""
    sets = {"approach": "distillation", "teacher_api_base": base, "teacher": teacher, "student": str(student),
            "distillation_mode": "responses", "dataset": str(dataset), "output_dir": str(tmp_path / out),
            "max_samples": 8, "eval_fraction": 0.25, "max_length": 64, "generation_max_new_tokens": 16,
            "generation_max_retries": 2, "generation_timeout": 1.0, "generation_concurrency": 4,
            "benchmark": False, "teacher_api_key_env": "TEST_TEACHER_KEY"}
    argv = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    return finetune_cli.main(argv + ["--defaults", "--yes", *extra])


def cached(tmp_path, out="out") -> list[dict]:
    path = tmp_path / out / CACHE_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---- the cache ------------------------------------------------------------------------------

def test_cache_reuses_matching_lines_and_survives_a_torn_last_line(tmp_path):
    teacher, settings = {"model": "t", "api_base": None}, {"max_new_tokens": 8}
    first = Request("answer", "What is 2 plus 2?", (("user", "What is 2 plus 2?"),))
    second = Request("answer", "What is 3 plus 3?", (("user", "What is 3 plus 3?"),))
    cache = ResponseCache.open(tmp_path, teacher, settings)
    cache.add(first, Reply("4", "stop", 5, 1))
    with (tmp_path / CACHE_FILE).open("a") as handle:
        handle.write('{"key": "torn by a SIGKILL')  # half a line, no newline
    again = ResponseCache.open(tmp_path, teacher, settings)
    assert again.missing([first, second]) == [second]
    assert again.tokens_spent == 6
    again.add(second, Reply("6", "stop", 5, 1))
    assert set(ResponseCache.open(tmp_path, teacher, settings).replies) == {first.key, second.key}
    # Other settings: nothing is reused, nothing is deleted.
    other = ResponseCache.open(tmp_path, teacher, {"max_new_tokens": 9})
    assert other.missing([first, second]) == [first, second]
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 3


# ---- an API teacher -------------------------------------------------------------------------

def test_api_teacher_writes_every_prompt_once_and_the_key_stays_secret(tmp_path, tiny_llama, qa_file,
                                                                       monkeypatch, capsys):
    monkeypatch.setenv("TEST_TEACHER_KEY", SECRET)
    with TeacherServer(key=SECRET) as server:
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base, "--generate-only") == 0
        assert len(server.requests) == 8  # 6 training + 2 held-out prompts
        assert {b["max_tokens"] for b in server.requests} == {16} and server.requests[0]["temperature"] == 0
        lines = cached(tmp_path)
        assert len(lines) == 8 and all(line["response"].startswith("The answer to") for line in lines)
        assert lines[0]["teacher"] == {"model": "ok", "api_base": server.base}
        assert lines[0]["finish_reason"] == "stop" and lines[0]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5}
        heldout = [json.loads(l) for l in (tmp_path / "out" / "teacher_heldout.jsonl").read_text().splitlines()]
        assert len(heldout) == 2 and heldout[0]["response"] == f"The answer to {heldout[0]['prompt']}"
        # A rerun with the same teacher and settings asks for nothing.
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base, "--generate-only", "--resume") == 0
        assert len(server.requests) == 8
    printed = capsys.readouterr()
    assert "prompt:" in printed.out and "response:" in printed.out  # samples shown before training
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in printed.out + printed.err


@pytest.mark.parametrize("model, attempts", [("ratelimit", 2), ("slow", 2), ("dropped", 2)])
def test_api_teacher_retries_429_timeouts_and_dropped_connections(tmp_path, tiny_llama, qa_file, model, attempts):
    with TeacherServer() as server:
        started = time.perf_counter()
        assert cli(tmp_path, tiny_llama, qa_file, model, server.base, "--generate-only", "--set", "max_samples=2",
                   "--set", "eval_fraction=0.5", "--set", "generation_min_kept=0") == 0
        assert sorted(server.attempts.values()) == [attempts] * 2
        assert len(cached(tmp_path)) == 2
        if model == "ratelimit":
            assert time.perf_counter() - started >= 1.0  # Retry-After: 1 was honoured


@pytest.mark.parametrize("model, key, message, resumable", [
    ("error500", None, "answered 500 after 3 attempts", True),
    ("malformed", None, "not a chat completion", False),
    ("missing", None, "model 'missing' is not served at", False),
    ("ok", "another-key", "refused the API key in TEST_TEACHER_KEY (401)", False),
])
def test_api_teacher_failures_are_one_line_and_keep_what_arrived(tmp_path, tiny_llama, qa_file, capsys, monkeypatch,
                                                                 model, key, message, resumable):
    monkeypatch.setenv("TEST_TEACHER_KEY", SECRET)
    with TeacherServer(key=key) as server:
        assert cli(tmp_path, tiny_llama, qa_file, model, server.base, "--generate-only") == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and SECRET not in err
    # --resume is offered only where a rerun can succeed (a server that failed for a while)
    assert ("finish with:" in err and "--resume" in err) == resumable


def test_unreachable_endpoint_is_one_line(tmp_path, tiny_llama, qa_file, capsys):
    with TeacherServer() as server:
        base = server.base  # a port nobody listens on once the server is gone
    assert cli(tmp_path, tiny_llama, qa_file, "ok", base, "--generate-only", "--set", "generation_max_retries=0") == 1
    err = capsys.readouterr().err
    assert f"can't reach the teacher endpoint {base}" in err and "Traceback" not in err


def test_server_dying_mid_run_keeps_what_arrived_and_resume_finishes(tmp_path, tiny_llama, qa_file, capsys):
    once = ["--generate-only", "--set", "generation_concurrency=1", "--set", "generation_max_retries=0"]
    with TeacherServer(die_after=3) as server:
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base, *once) == 1
    assert "3 of 8 responses arrived and are kept" in capsys.readouterr().err
    kept = {line["prompt"] for line in cached(tmp_path)}
    assert len(kept) == 3
    with TeacherServer(port=server.port) as again:  # the server is back
        assert cli(tmp_path, tiny_llama, qa_file, "ok", again.base, *once, "--resume") == 0
        assert len(again.requests) == 5 and not set(again.prompts()) & kept
    assert len(cached(tmp_path)) == 8


def test_spend_cap_stops_with_a_clear_message_and_keeps_what_arrived(tmp_path, tiny_llama, qa_file, capsys):
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base, "--generate-only",
                   "--set", "generation_concurrency=1", "--set", "generation_token_budget=45",
                   "--set", "generation_on_budget=stop") == 1
        assert len(server.requests) == 3  # 15 tokens each: the cap is reached after three
    err = capsys.readouterr().err
    assert "spend cap reached: 45 of generation_token_budget 45 tokens" in err and "Traceback" not in err
    assert len(cached(tmp_path)) == 3


def test_api_teacher_refuses_logits_and_hybrid_before_anything_loads(tmp_path, tiny_llama, qa_file, capsys):
    assert cli(tmp_path, tiny_llama, qa_file, "ok", "http://127.0.0.1:9/v1", "--set", "distillation_mode=hybrid") == 1
    err = capsys.readouterr().err
    assert "distillation_mode: hybrid needs the teacher's weights" in err and "use distillation_mode responses" in err


def test_an_answers_file_from_before_these_settings_replays_as_before(tmp_path, capsys):
    """No terminal, no --defaults: the new keys are not "missing"; the run stays logits distillation."""
    argv = ["--answers", str(ROOT / "examples" / "distill-quick.yaml"), "--dry-run", "--set", f"output_dir={tmp_path}"]
    assert finetune_cli.main(argv) == 0
    plan = capsys.readouterr().out
    assert "distillation_mode" in plan and "logits" in plan and "teacher_api_base" in plan


@pytest.mark.slow
def test_sigkill_mid_generation_then_resume_sends_exactly_the_missing_requests(tmp_path, tiny_llama, qa_file):
    port, log = _free_port(), tmp_path / "requests.log"
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "teacher_server.py"), str(port), "0.2", str(log)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        command = [sys.executable, str(ROOT / "finetune_cli.py"),
                   *_answers(tmp_path, tiny_llama, qa_file, f"http://127.0.0.1:{port}/v1"),
                   "--defaults", "--yes", "--generate-only"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = tmp_path / "out" / CACHE_FILE
        deadline = time.time() + 60
        while time.time() < deadline and (not cache.is_file() or len(cache.read_text().splitlines()) < 4):
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        kept = {json.loads(line)["prompt"] for line in cache.read_text().splitlines() if line.endswith("}")}
        assert 4 <= len(kept) < 12
        asked_before = len(log.read_text().splitlines())
        second = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert second.returncode == 0, second.stderr
        asked_again = [json.loads(line) for line in log.read_text().splitlines()[asked_before:]]
        assert len(asked_again) == 12 - len(kept) and not set(asked_again) & kept
        assert len(cache.read_text().splitlines()) == 12
    finally:
        server.kill()
        server.wait()


def _answers(tmp_path, student, dataset, base) -> list[str]:
    sets = {"approach": "distillation", "teacher_api_base": base, "teacher": "ok", "student": str(student),
            "distillation_mode": "responses", "dataset": str(dataset), "output_dir": str(tmp_path / "out"),
            "eval_fraction": 0.25, "max_length": 64, "benchmark": False, "max_samples": 12,
            "generation_concurrency": 1}
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
