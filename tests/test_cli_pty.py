"""The wizard in a real pseudo-terminal, driven by keystrokes like a person."""

import os
import sys
import tempfile
import time
from pathlib import Path

import pexpect
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTER, DOWN, CLEAR_LINE, CTRL_C = "\r", "\x1b[B", "\x15", "\x03"


def spawn(*args, cwd=None):
    # pexpect doesn't answer prompt_toolkit's cursor-position request; without this each prompt
    # waits a second for the reply a real terminal would send.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROMPT_TOOLKIT_NO_CPR": "1"}
    # A fresh working directory: answers files found below it would become the defaults.
    child = pexpect.spawn(sys.executable, [str(ROOT / "finetune_cli.py"), *args], cwd=str(cwd or tempfile.mkdtemp()),
                          env=env, encoding="utf-8", timeout=60, dimensions=(60, 200))
    return child


def answer(child, script):
    """script: (text the prompt shows, keys to send) pairs, in order."""
    for prompt, keys in script:
        child.expect(prompt)
        child.send(keys)


def finish(child) -> str:
    child.expect(pexpect.EOF)
    child.close()
    return child.before


def type_text(text):
    return CLEAR_LINE + text + ENTER


def test_fine_tuning_path_with_enter_and_typed_answers(tmp_path):
    out = tmp_path / "ft"
    child = spawn("--dry-run")
    answer(child, [
        ("Step 0", ENTER),  # Enter = fine-tuning, the default
        ("Model to fine-tune", ENTER),
        ("Method", DOWN + ENTER),  # QLoRA
        ("Output directory", type_text(str(out))),
        ("Dataset", ENTER), ("How many samples", type_text("200")), ("Maximum sequence length", ENTER),
        ("LoRA rank", ENTER), ("LoRA alpha", ENTER), ("LoRA dropout", ENTER),
        ("Quantisation", DOWN + ENTER),  # 8-bit
        ("Epochs", type_text("1")), ("Batch size", ENTER), ("Learning rate", ENTER),
        ("accumulation", ENTER), ("Benchmark", ENTER), ("held-out samples", ENTER), ("LLM judge", ENTER), ("Upload", ENTER),
    ])
    output = finish(child)
    assert child.exitstatus == 0, output
    saved = yaml.safe_load((out / "finetuner-answers.yaml").read_text())
    assert saved["approach"] == "fine-tuning" and saved["method"] == "qlora"
    assert saved["quantization"] == "8bit" and saved["lora_r"] == 16 and saved["lora_alpha"] == 64
    assert saved["max_samples"] == 200 and saved["epochs"] == 1
    assert "temperature" not in saved and "teacher" not in saved


def test_distillation_path_derives_a_student_and_revalidates_typed_values(tmp_path):
    out = tmp_path / "kd"
    child = spawn("--dry-run")
    answer(child, [
        ("Step 0", DOWN + ENTER),
        ("OpenAI-compatible endpoint", ENTER),
        ("Teacher model", ENTER), ("Student model", ENTER), ("of its 30 decoder layers", type_text("10")),
        ("learn from the teacher", ENTER), ("Output directory", type_text(str(out))),
        ("Dataset", ENTER), ("How many samples", ENTER), ("Maximum sequence length", ENTER),
        ("Temperature", type_text("0")),
    ])
    child.expect("must be greater than 0")  # the same validation as a file answer, shown in place
    child.send(type_text("3"))
    answer(child, [
        ("Alpha", type_text("0.7")), ("How should the student train", DOWN + ENTER),
        ("Cache the teacher", ENTER), ("LoRA rank", ENTER), ("LoRA alpha", ENTER), ("LoRA dropout", ENTER),
        ("Epochs", ENTER), ("Batch size", ENTER), ("Learning rate", ENTER), ("accumulation", ENTER),
        ("Benchmark", ENTER), ("held-out samples", ENTER), ("LLM judge", ENTER), ("Upload", ENTER),
    ])
    output = finish(child)
    assert child.exitstatus == 0, output
    saved = yaml.safe_load((out / "finetuner-answers.yaml").read_text())
    assert saved["approach"] == "distillation" and saved["student_layers"] == 10
    assert saved["temperature"] == 3.0 and saved["alpha"] == 0.7 and saved["student_training"] == "lora"
    assert "method" not in saved and saved["distillation_mode"] == "logits" and saved["teacher_api_base"] is None


def test_partial_answers_file_asks_only_for_the_gaps(tmp_path):
    out = tmp_path / "p"
    partial = {k: v for k, v in yaml.safe_load(_complete_answers(out)).items() if k not in ("epochs", "alpha")}
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(partial))
    child = spawn("--answers", str(path), "--dry-run")
    child.expect("Alpha")
    child.send(type_text("0.4"))
    index = child.expect(["Epochs", "Teacher", "Dataset"])
    assert index == 0, "asked a question the file already answers"
    child.send(type_text("2"))
    assert "Dry run" in finish(child)
    assert child.exitstatus == 0


def test_ctrl_c_at_a_prompt_exits_130_without_traceback():
    child = spawn()
    child.expect("Step 0")
    child.send(CTRL_C)
    output = finish(child)
    assert child.exitstatus == 130
    assert "Cancelled" in output and "Traceback" not in output


def test_non_empty_output_dir_asks_before_writing_into_it(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = tmp_path / "a.yaml"
    path.write_text(_complete_answers(out))
    child = spawn("--answers", str(path), "--dry-run")
    child.expect("already has files")
    child.send("n")
    child.expect("choose another directory")
    child.expect("Output directory")
    child.send(type_text(str(tmp_path / "fresh")))
    assert "Dry run" in finish(child)
    assert (out / "notes.txt").read_text() == "mine"


def test_edit_one_setting_at_start_then_decline_keeps_the_answers(tmp_path, tiny_llama, tiny_llama_small, qa_file):
    path = tmp_path / "a.yaml"
    # Tiny models: the plan's probe (run at each plan) then takes a moment; this test is about the prompts.
    path.write_text(_complete_answers(tmp_path / "c", teacher=str(tiny_llama), student=str(tiny_llama_small),
                                      student_layers=None, dataset=str(qa_file), max_length=64))
    child = spawn("--answers", str(path))
    child.expect("Training example")
    child.expect("masked, not in the loss")  # the prompt part of the example, marked
    child.expect("Plan")
    child.expect("Start\\?")
    child.send(DOWN + ENTER)  # change a setting first
    child.expect("Which setting")
    child.send("epochs")  # type to filter the list
    child.expect("epochs = 3")
    child.send(ENTER)
    child.expect("Epochs")
    child.send(type_text("2"))
    child.expect("Plan")
    child.expect("Start\\?")
    child.send(DOWN + DOWN + ENTER)  # not now
    output = finish(child)
    assert "Nothing started" in output and child.exitstatus == 0
    saved = yaml.safe_load((tmp_path / "c" / "finetuner-answers.yaml").read_text())
    assert saved["epochs"] == 2 and saved["approach"] == "distillation"


def test_previous_answers_become_the_defaults(tmp_path):
    earlier = tmp_path / "runs" / "first"
    earlier.mkdir(parents=True)
    (earlier / "finetuner-answers.yaml").write_text(yaml.safe_dump(
        {"approach": "fine-tuning", "method": "qlora", "max_samples": 123, "epochs": 2, "output_dir": str(earlier)}))
    out = tmp_path / "second"
    child = spawn("--dry-run", cwd=tmp_path)
    child.expect("previous answers")
    answer(child, [
        ("Step 0", ENTER), ("Model to fine-tune", ENTER), ("Method", ENTER),
        ("Output directory", type_text(str(out))),
        ("Dataset", ENTER), ("How many samples", ENTER), ("Maximum sequence length", ENTER),
        ("LoRA rank", ENTER), ("LoRA alpha", ENTER), ("LoRA dropout", ENTER), ("Quantisation", ENTER),
        ("Epochs", ENTER), ("Batch size", ENTER), ("Learning rate", ENTER),
        ("accumulation", ENTER), ("Benchmark", ENTER), ("held-out samples", ENTER), ("LLM judge", ENTER), ("Upload", ENTER),
    ])
    output = finish(child)
    assert child.exitstatus == 0, output
    saved = yaml.safe_load((out / "finetuner-answers.yaml").read_text())
    assert saved["method"] == "qlora" and saved["max_samples"] == 123 and saved["epochs"] == 2


def test_typing_replaces_the_default_and_tab_completes_paths(tmp_path):
    data = tmp_path / "my-questions.jsonl"
    data.write_text("".join('{"question": "q%d", "answer": "a"}\n' % i for i in range(20)))
    out = tmp_path / "o"
    child = spawn("--dry-run", "--set", "approach=fine-tuning", "--set", f"output_dir={out}",
                  "--set", "method=lora", "--set", "model=smollm2-135m-instruct", cwd=tmp_path)
    child.expect("Dataset")
    child.send("my-q")
    child.expect("my-questions.jsonl")  # the matching file names in the working directory, listed
    for key in ("\t", ENTER, ENTER):  # Tab picks the file, Enter accepts it, Enter answers
        time.sleep(0.5)  # let the completer catch up, as a person's pauses do
        child.send(key)
    child.expect("How many samples")
    child.send("7" + ENTER)  # typed over the default 1000, not appended to it
    answer(child, [(prompt, ENTER) for prompt in (
        "Maximum sequence length", "LoRA rank", "LoRA alpha", "LoRA dropout", "Epochs", "Batch size",
        "Learning rate", "accumulation", "Benchmark", "held-out samples", "LLM judge", "Upload")])
    output = finish(child)
    saved = yaml.safe_load((out / "finetuner-answers.yaml").read_text())
    assert saved["dataset"] == "my-questions.jsonl" and saved["max_samples"] == 7, output


def _complete_answers(out: Path, **settings) -> str:
    from finetuner.config import RunConfig

    return yaml.safe_dump(RunConfig(approach="distillation", output_dir=str(out), **settings).to_answers())


# ---- arbitrary typing -----------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = st.sampled_from([ENTER, ENTER, ENTER, DOWN, "\x1b[A", CLEAR_LINE, "\x7f", "0", "7", "-", ".", "e", "a",
                        "/", " ", "y", "n", "lora", "2e-4", "1.5"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(KEYS, max_size=60))
def test_any_keystrokes_end_in_a_valid_plan_or_a_clear_exit(tmp_path, keys):
    """A person typing anything, then pressing Enter until the wizard is done (or giving up with
    Ctrl-C): the wizard ends with a valid plan, a one-line error, or "Cancelled.", never a traceback."""
    import uuid

    from finetuner.config import RunConfig

    out = tmp_path / uuid.uuid4().hex
    child = spawn("--dry-run", "--set", f"output_dir={out}")
    # Keys typed before the first prompt reach a terminal still in cooked mode (the shell's, not the
    # wizard's): wait for it, as a person does, so the test is about the wizard's handling.
    child.expect("Step 0", timeout=60)
    child.delaybeforesend = 0.01
    for key in [*keys, *[ENTER] * 40, CTRL_C]:
        if not child.isalive():
            break
        try:
            child.send(key)
        except OSError:  # the wizard finished between the check and the write
            break
    time.sleep(1)
    if child.isalive():  # a Ctrl-C typed while no prompt was reading can be lost: a person presses it again
        child.send(CTRL_C)
    output = finish(child)
    assert "Traceback" not in output, output
    assert child.exitstatus in (0, 1, 130), output
    if child.exitstatus == 0:
        RunConfig(**yaml.safe_load((out / "finetuner-answers.yaml").read_text()))
    elif child.exitstatus == 1:
        assert "Error:" in output
    else:
        assert "Cancelled." in output


def test_an_api_teacher_is_offered_responses_and_only_the_key_variable_name_is_saved(tmp_path):
    out = tmp_path / "api"
    child = spawn("--dry-run")
    answer(child, [
        ("Step 0", DOWN + ENTER),
        ("OpenAI-compatible endpoint", type_text("http://127.0.0.1:8000/v1")), ("environment variable", ENTER),
        ("Teacher model name at", type_text("gpt-teacher")), ("Student model", ENTER), ("decoder layers", ENTER),
        ("learn from the teacher", ENTER), ("Output directory", type_text(str(out))),
        ("Dataset", ENTER), ("How many samples", ENTER), ("Maximum sequence length", ENTER),
        ("How should the student train", ENTER), ("Questions the teacher writes", ENTER),
        ("Longest response", ENTER), ("sampling temperature", ENTER), ("Spend cap", type_text("5000")),
        ("Epochs", ENTER), ("Batch size", ENTER), ("Learning rate", ENTER), ("accumulation", ENTER),
        ("Benchmark", ENTER), ("held-out samples", ENTER), ("LLM judge", ENTER), ("Upload", ENTER),
    ])
    output = finish(child)
    assert child.exitstatus == 0, output
    saved = yaml.safe_load((out / "finetuner-answers.yaml").read_text())
    assert saved["distillation_mode"] == "responses" and saved["teacher"] == "gpt-teacher"
    assert saved["teacher_api_key_env"] == "OPENAI_API_KEY" and saved["generation_token_budget"] == 5000
    assert "temperature" not in saved and "alpha" not in saved


# ---- what is never asked, and what cannot answer ---------------------------------------------

def _tiny_fine_tuning(tmp_path, model, data, **settings) -> Path:
    from finetuner.config import RunConfig

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RunConfig(
        approach="fine-tuning", model=str(model), method="lora", output_dir=str(tmp_path / "run"), dataset=str(data),
        max_samples=16, max_length=64, epochs=1, max_steps=1, batch_size=4, gradient_accumulation=1,
        benchmark=False, upload=False, merge_adapter=False, **settings).to_answers()))
    return path


@pytest.mark.slow  # the checks and the probe on tiny models (about 20 s on 2 busy cores)
def test_an_enter_typed_during_the_checks_does_not_answer_start(tmp_path, tiny_gpt2, qa_file):
    child = spawn("--answers", str(_tiny_fine_tuning(tmp_path, tiny_gpt2, qa_file)))
    child.expect("Checking tokenizers")
    child.send(ENTER)  # typed ahead, while nothing asks
    child.expect("Start\\?")
    assert child.expect([pexpect.TIMEOUT, "Answers saved to"], timeout=2) == 0, "the typed-ahead Enter started the run"
    child.send(DOWN + DOWN + ENTER)  # not now
    output = finish(child)
    assert "Nothing started" in output and child.exitstatus == 0


def test_yes_asks_nothing_on_a_terminal_where_the_answers_leave_gaps(tmp_path):
    child = spawn("--answers", str(ROOT / "examples" / "distill-quick.yaml"), "--yes", "--dry-run",
                  "--set", f"output_dir={tmp_path / 'quick'}")  # README's main command, checked only
    output = finish(child)  # any question would wait here until the timeout
    assert child.exitstatus == 0 and "Dry run" in output, output
    assert "Cache the teacher" not in output
    child = spawn("--yes", "--dry-run")  # nothing answered: reported, not asked
    output = finish(child)
    assert child.exitstatus == 1 and "missing" in output and "Step 0" not in output, output


@pytest.mark.slow  # trains one step in a terminal (about 20 s on 2 busy cores)
def test_yes_then_the_next_command_runs_to_the_end_without_a_prompt(tmp_path, tiny_gpt2, qa_file):
    command = (f"{sys.executable} {ROOT / 'finetune_cli.py'} --answers {_tiny_fine_tuning(tmp_path, tiny_gpt2, qa_file)}"
               " --yes && echo NEXT-RAN")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn("bash", ["-c", command], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=120,
                          dimensions=(40, 110))
    index = child.expect(["NEXT-RAN", r"\? ", pexpect.EOF])
    assert index == 0, f"stopped at a prompt or failed: {child.before}"
    finish(child)


@pytest.mark.slow  # reads a tokenizer and the data in a terminal (about 10 s on 2 busy cores)
def test_a_check_failing_after_the_questions_keeps_the_answers_and_says_how_to_replay(tmp_path, tiny_gpt2):
    data = tmp_path / "numbers.jsonl"
    data.write_text("".join(f'{{"a": {i}, "b": {i + 1}}}\n' for i in range(10)))  # no column to train on
    out = tmp_path / "kept"
    child = spawn("--set", "approach=fine-tuning", "--set", f"model={tiny_gpt2}", "--set", "method=lora",
                  "--set", f"output_dir={out}", "--set", f"dataset={data}", "--defaults")
    output = finish(child)
    assert child.exitstatus == 1 and "found no column to train on" in output, output
    saved = out / "finetuner-answers.yaml"
    assert saved.is_file() and yaml.safe_load(saved.read_text())["dataset"] == str(data)
    assert f"--answers {saved}" in output.replace("\r\n", "")
