"""The command line without a terminal: replay, overrides, dry-run and every bad input.
Each runs the real entry point in a subprocess, as CI or a user's script would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(ROOT / "finetune_cli.py"), *args], cwd=cwd or ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def write_answers(path, **answers):
    path.write_text(yaml.safe_dump(answers))
    return path


def assert_user_error(result, fragment):
    assert result.returncode == 1, result.stdout + result.stderr
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_dry_run_with_defaults_validates_and_loads_nothing(tmp_path):
    result = cli("--defaults", "--dry-run", "--set", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    assert "Dry run" in result.stdout and "smollm2-135m-instruct" in result.stdout
    assert not (tmp_path / "out").exists()


def test_replay_with_override(tmp_path):
    answers = write_answers(tmp_path / "a.yaml", approach="distillation", output_dir=str(tmp_path / "o"), epochs=3)
    result = cli("--answers", str(answers), "--defaults", "--dry-run", "--set", "epochs=1", "--set", "alpha=0.9")
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "│ epochs" in plan and "│ 1 " in plan.split("│ epochs", 1)[1].splitlines()[0]
    assert "0.9" in plan.split("│ alpha", 1)[1].splitlines()[0]


def test_missing_keys_without_a_terminal_are_all_reported(tmp_path):
    answers = write_answers(tmp_path / "a.yaml", approach="distillation")
    result = cli("--answers", str(answers), "--dry-run")
    assert_user_error(result, "settings need fixing")
    for key in ("output_dir", "dataset", "epochs", "temperature"):
        assert f"{key}: missing" in result.stderr


@pytest.mark.parametrize("setting,fragment", [
    ("temperature=0", "temperature: must be greater than 0"),
    ("temperature=-2", "temperature: must be greater than 0"),
    ("alpha=1.5", "alpha: must be between 0 and 1"),
    ("epochs=0", "epochs: must be at least 1"),
    ("batch_size=0", "batch_size: must be at least 1"),
    ("learning_rate=1", "learning_rate: must be between 0 and 1"),
    ("learning_rate=0", "learning_rate: must be between 0 and 1"),
    ("epochs=three", "epochs: expected a whole number"),
    ("colour=red", "colour: unknown setting"),
    ("dataset=missing.jsonl", "dataset: no such file"),
    ("dataset=data.xlsx", "dataset: unsupported file type"),
    ("student_layers=null", "student_layers: the student is the teacher itself"),
    ("student_layers=31", "has only 30 layers"),
])
def test_bad_values_get_one_clear_line(tmp_path, setting, fragment):
    result = cli("--defaults", "--dry-run", "--set", "approach=distillation", "--set",
                 f"output_dir={tmp_path / 'o'}", "--set", setting)
    assert_user_error(result, fragment)


def test_unusual_temperature_warns_but_runs(tmp_path):
    result = cli("--defaults", "--dry-run", "--set", "approach=distillation", "--set", "temperature=8",
                 "--set", f"output_dir={tmp_path / 'o'}")
    assert result.returncode == 0 and "outside the usual 1-5" in result.stdout


def test_wrong_types_in_the_answers_file(tmp_path):
    answers = write_answers(tmp_path / "a.yaml", approach="fine-tuning", epochs=[1, 2], benchmark="perhaps")
    result = cli("--answers", str(answers), "--defaults", "--dry-run")
    assert_user_error(result, "epochs: expected a whole number")
    assert "benchmark: expected true or false" in result.stderr


@pytest.mark.parametrize("content,fragment", [("approach: [", "not valid YAML"), ("just text", "must be a mapping")])
def test_malformed_answers_file(tmp_path, content, fragment):
    path = tmp_path / "a.yaml"
    path.write_text(content)
    assert_user_error(cli("--answers", str(path), "--dry-run"), fragment)


def test_unreadable_answers_file(tmp_path):
    assert_user_error(cli("--answers", str(tmp_path / "none.yaml")), "answers file not found")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert_user_error(cli("--answers", str(tmp_path / "binary.yaml")), "can't read answers file")


def test_non_empty_output_dir_is_refused_in_replay_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = cli("--defaults", "--dry-run", "--set", f"output_dir={out}")
    assert_user_error(result, "exists and is not empty; pass --overwrite")
    assert cli("--defaults", "--dry-run", "--overwrite", "--set", f"output_dir={out}").returncode == 0
    assert (out / "precious.txt").read_text() == "keep me"


def test_output_dir_holding_only_its_answers_file_counts_as_empty(tmp_path):
    out = tmp_path / "out"
    answers = write_answers((out.mkdir() or out) / "finetuner-answers.yaml", output_dir=str(out))
    assert cli("--answers", str(answers), "--defaults", "--dry-run").returncode == 0


def test_benchmark_only_on_a_directory_that_is_not_an_output(tmp_path):
    assert_user_error(cli("--benchmark-only", str(tmp_path)), "has no finetuner-answers.yaml")


def test_benchmark_only_applies_set_overrides(tmp_path):
    out = tmp_path / "run"
    write_answers((out.mkdir() or out) / "finetuner-answers.yaml", output_dir=str(out), benchmark_samples=8)
    # Checked like any other answer before anything loads: proof the override was not ignored.
    assert_user_error(cli("--benchmark-only", str(out), "--set", "benchmark_samples=0"),
                      "benchmark_samples: must be at least 1")


def test_a_directory_as_the_dataset_is_named_as_one(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.md").write_text("hello")
    result = cli("--defaults", "--dry-run", "--set", f"output_dir={tmp_path / 'o'}", "--set", f"dataset={folder}")
    assert_user_error(result, "is a directory with no")


def test_dry_run_checks_the_data_has_a_column_to_train_on(tmp_path, tiny_llama):
    data = tmp_path / "numbers.jsonl"
    data.write_text("".join(f'{{"a": {i}, "b": {i + 1}}}\n' for i in range(10)))
    result = cli("--defaults", "--dry-run", "--set", f"output_dir={tmp_path / 'o'}", "--set", f"model={tiny_llama}",
                 "--set", f"dataset={data}")
    assert_user_error(result, "found no column to train on")


def test_dry_run_checks_teacher_and_student_tokenizers(tmp_path, tiny_llama, qa_file):
    from conftest import build_llama, train_tokenizer

    other = build_llama(tmp_path / "other", train_tokenizer(tmp_path / "tok", vocab_size=300), layers=2)
    result = cli("--defaults", "--dry-run", "--set", "approach=distillation", "--set", f"teacher={tiny_llama}",
                 "--set", f"student={other}", "--set", f"dataset={qa_file}", "--set", f"output_dir={tmp_path / 'o'}",
                 "--set", "distillation_mode=logits")  # --defaults alone picks responses for differing tokenizers
    assert_user_error(result, "tokenizers differ")
    assert "responses" in result.stderr  # the hint offers the mode that works


def test_benchmark_only_benchmarks_a_run_trained_without_a_benchmark_with_its_set_settings(tmp_path):
    out = tmp_path / "run"
    write_answers((out.mkdir() or out) / "finetuner-answers.yaml", output_dir=str(out), benchmark=False)
    # benchmark: false leaves the benchmark settings out; --benchmark-only turns it on, so they count.
    assert_user_error(cli("--benchmark-only", str(out), "--set", "benchmark_samples=0"),
                      "benchmark_samples: must be at least 1")


def test_upload_only_while_offline_says_the_hub_is_offline_not_to_use_upload_only(tmp_path):
    out = tmp_path / "run"
    write_answers((out.mkdir() or out) / "finetuner-answers.yaml", output_dir=str(out), hub_repo="me/model")
    result = cli("--upload-only", str(out))
    assert_user_error(result, "HF_HUB_OFFLINE is set")
    assert "--upload-only" not in result.stderr


def test_the_distillation_progress_line_fits_a_110_column_terminal(monkeypatch):
    import io

    from rich.console import Console
    from transformers import TrainerState

    from finetuner import progress, ui

    console = Console(width=110, record=True, force_terminal=True, file=io.StringIO())
    monkeypatch.setattr(ui, "console", console)
    reporter = progress.ProgressReporter(interactive=True)
    state = TrainerState(max_steps=680, global_step=0, num_input_tokens_seen=0)
    reporter.on_train_begin(None, state, None)
    state.global_step, state.num_input_tokens_seen = 100, 50_000
    reporter.on_log(None, state, None, logs={"loss": 2.5, "ce": 2.0, "kl": 0.6, "learning_rate": 5e-4, "epoch": 0.25})
    reporter.on_step_end(None, state, None)
    reporter.on_train_end(None, state, None)
    import re

    # Each refresh redraws the line in place; the recording keeps them side by side.
    drawn = [part.rstrip() for line in console.export_text().splitlines() for part in re.split(r"(?=training ━)", line)
             if "/680" in part]
    assert drawn and "KL 0.6000" in drawn[-1], console.export_text()  # the figures on the bar's line, not below
    assert all(len(part) <= 110 for part in drawn), drawn
