"""Every way a run can go wrong that a user can fix, through the real command line.

Each case runs `finetune_cli.py --answers FILE --yes` in a subprocess on real files and tiny real
models, and checks what the user sees: the exit code, the message, and never a traceback.
Failures must come before any weights load; warnings must let the run finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import arithmetic_pairs, build_llama, train_tokenizer
from hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]


def cli(tmp_path: Path, *extra: str, env: dict | None = None, timeout: int = 180, **answers):
    """Run the wizard on an answers file (tiny, fast defaults + `answers`); return (rc, stdout, stderr)."""
    base = dict(output_dir=str(tmp_path / "out"), max_samples=16, max_length=64, epochs=1, max_steps=1,
                batch_size=4, gradient_accumulation=1, benchmark=False, upload=False, seed=0)
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump({**base, **answers}))
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    result = subprocess.run([sys.executable, str(ROOT / "finetune_cli.py"), "--answers", str(path), "--defaults",
                             "--yes", *extra], cwd=tmp_path, env=run_env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def assert_fails(result, *fragments: str) -> None:
    rc, out, err = result
    assert rc == 1, out + err
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in out + err
    assert err.startswith("Error:"), err  # our one message, not a library's log lines before it


def assert_warns_and_finishes(result, *fragments: str) -> None:
    rc, out, err = result
    assert rc == 0, out + err
    for fragment in fragments:
        assert fragment in out, out
    assert "Traceback" not in out + err


def fine_tune(model: Path, dataset: Path | str, **extra) -> dict:
    return {"approach": "fine-tuning", "model": str(model), "method": "lora", "dataset": str(dataset), **extra}


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ---- bad data -------------------------------------------------------------------------------

QA = "".join(json.dumps(r) + "\n" for r in arithmetic_pairs(16))

BAD_DATA = {
    "empty file": ("data.jsonl", "", "is empty"),
    "a JSONL line that is not JSON": ("data.jsonl", "".join(QA.splitlines(keepends=True)[:2]) + "{oops\n",
                                      "line 3 is not valid JSON"),
    "a CSV without the needed columns": ("data.csv", "title,body\na,b\nc,d\n", "found no column to train on"),
    "no usable text column": ("data.jsonl", '{"id": 1, "score": 2}\n{"id": 2, "score": 3}\n',
                              "found no column to train on (columns: id, score)"),
    "every row filtered out": ("data.csv", "question,answer\nWhat?,\nWhy?,\n", "every row of"),
    "non-UTF-8 text": ("data.jsonl", QA.encode() + '{"question": "caf\xe9", "answer": "x"}\n'.encode("latin-1"),
                       "is not UTF-8 text (line 17"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_clear_line(tmp_path, tiny_llama, case):
    name, content, fragment = BAD_DATA[case]
    data = write(tmp_path / name, content)
    assert_fails(cli(tmp_path, **fine_tune(tiny_llama, data)), fragment)
    assert not (tmp_path / "out" / "model").exists()


def test_csv_rows_with_nan_are_skipped_and_counted(tmp_path, tiny_llama):
    rows = "".join(f"What is {i} plus 1?,{i + 1}\n" for i in range(12))
    data = write(tmp_path / "data.csv", "question,answer\n" + rows + "What is nothing?,NaN\n,5\n")
    assert_warns_and_finishes(cli(tmp_path, **fine_tune(tiny_llama, data)), "Skipped 2 rows with empty or missing")


def test_rows_longer_than_max_length_are_truncated_and_counted(tmp_path, tiny_llama):
    long_answer = " ".join(["and one more"] * 40)
    data = write(tmp_path / "data.jsonl", QA + json.dumps({"question": "Count?", "answer": long_answer}) + "\n")
    assert_warns_and_finishes(cli(tmp_path, **fine_tune(tiny_llama, data, max_samples=17)),
                              "Truncated 1 row to max_length (64 tokens)")


def test_fewer_samples_than_asked_says_so(tmp_path, tiny_llama, qa_file):
    assert_warns_and_finishes(cli(tmp_path, **fine_tune(tiny_llama, qa_file, max_samples=500)),
                              "max_samples is 500, but only 64 rows can be used")


# ---- bad models -----------------------------------------------------------------------------

def test_a_model_directory_that_does_not_exist(tmp_path, qa_file):
    assert_fails(cli(tmp_path, **fine_tune(tmp_path / "no-such-model", qa_file)), "no such model directory")


def test_a_hub_model_that_does_not_exist(tmp_path, qa_file):
    with HubServer(token="hf_x", user="alice") as hub:
        result = cli(tmp_path, **fine_tune("nobody/no-such-model", qa_file),
                     env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")})
    assert_fails(result, "nobody/no-such-model was not found on the Hugging Face Hub", "local model directory")


def test_a_hub_model_while_offline_names_the_way_out(tmp_path, qa_file):
    result = cli(tmp_path, **fine_tune("HuggingFaceTB/SmolLM2-360M", qa_file), env={"HF_HOME": str(tmp_path / "hf")})
    # Refused at the question now (issue 16): offline, a Hub id must already be in the local cache.
    assert_fails(result, "HF_HUB_OFFLINE is set", "not in the local Hub cache")


def test_a_model_that_is_not_a_causal_lm(tmp_path, tokenizer, qa_file):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    assert_fails(cli(tmp_path, **fine_tune(bert, qa_file)), "not a causal (text-generating) language model")


def test_teacher_and_student_tokenizers_that_differ(tmp_path, tiny_llama, qa_file):
    other = build_llama(tmp_path / "other", train_tokenizer(tmp_path / "other-tok", vocab_size=300), layers=2)
    result = cli(tmp_path, approach="distillation", teacher=str(tiny_llama), student=str(other),
                 dataset=str(qa_file), distillation_mode="logits")
    assert_fails(result, "tokenizer")
    assert "distillation_mode responses" in result[2]  # the hint names the mode that works
    assert "Loading teacher" not in result[1]  # refused before any weights load


def test_a_student_larger_than_its_teacher_warns_and_runs(tmp_path, tiny_llama, tiny_llama_small, qa_file):
    result = cli(tmp_path, approach="distillation", teacher=str(tiny_llama_small), student=str(tiny_llama),
                 dataset=str(qa_file))
    assert_warns_and_finishes(result, "is not smaller than the teacher")


def test_student_layers_out_of_range(tmp_path, tiny_llama, qa_file):
    result = cli(tmp_path, approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama),
                 student_layers=9, dataset=str(qa_file))
    assert_fails(result, "has only 4 layers (asked to keep 9)")


def test_4bit_where_bitsandbytes_cannot_run(tmp_path, tiny_llama, qa_file):
    # bitsandbytes installed without its native libraries, as on a platform it has no build for.
    import importlib.util
    import shutil

    installed = Path(importlib.util.find_spec("bitsandbytes").submodule_search_locations[0])
    shutil.copytree(installed, tmp_path / "site" / "bitsandbytes", ignore=shutil.ignore_patterns("*.so", "*.dll",
                                                                                                 "*.dylib"))
    result = cli(tmp_path, **fine_tune(tiny_llama, qa_file, method="qlora", quantization="4bit"),
                 env={"PYTHONPATH": str(tmp_path / "site")})
    assert_fails(result, "QLoRA 4bit can't run here", "use method lora")


# ---- disk and memory ------------------------------------------------------------------------

def test_not_enough_disk_space_is_found_before_anything_loads(tmp_path, tokenizer, qa_file):
    """A config that promises trillions of parameters: the check reads it, never the (absent) weights."""
    from transformers import LlamaConfig

    huge = tmp_path / "huge"
    LlamaConfig(vocab_size=len(tokenizer), hidden_size=16384, intermediate_size=65536, num_hidden_layers=400,
                num_attention_heads=128, num_key_value_heads=8, tie_word_embeddings=True).save_pretrained(huge)
    tokenizer.save_pretrained(huge)
    result = cli(tmp_path, approach="distillation", teacher=str(huge), student=str(huge), student_layers=200,
                 dataset=str(qa_file))
    assert_fails(result, "not enough disk space for", "GB needed (checkpoints and the final model)",
                 "student_training: lora")
    assert "Preparing dataset" not in result[1]


def test_running_out_of_memory_names_what_to_lower(tmp_path, tiny_llama, qa_file):
    # A real allocation failure: the process's address space is capped, so the first large
    # training allocation fails, as on a machine without enough memory.
    rows = "".join(json.dumps({"question": "What is it? " * 200, "answer": "yes " * 300}) + "\n" for _ in range(64))
    data = write(tmp_path / "long.jsonl", rows)
    cap = (tmp_path / "cap.py")
    # The cap is what the process has mapped once the libraries are loaded, plus `headroom`:
    # enough to load the tiny model and data, far too little for a batch of 64 x 2048 tokens.
    write(cap, "import os, re, resource, runpy, sys\n"
               "sys.path.insert(0, os.path.dirname(sys.argv[2]))\n"
               "import finetuner.training.loop, finetuner.data.preparing, finetuner.models\n"
               "mapped = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
               "limit = mapped + int(sys.argv.pop(1))\n"
               "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
               "sys.argv.pop(0)\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(fine_tune(tiny_llama, data), output_dir=str(tmp_path / "out"),
                                           max_samples=64, max_length=2048, batch_size=64, max_steps=1,
                                           benchmark=False, upload=False)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(cap), str(800 * 2**20), str(ROOT / "finetune_cli.py"),
                             "--answers", str(answers), "--defaults", "--yes"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert_fails((result.returncode, result.stdout, result.stderr), "ran out of memory",
                 "lower batch_size", "max_length")


# ---- interruption ---------------------------------------------------------------------------

def test_a_second_ctrl_c_exits_at_once(tmp_path, tiny_llama, qa_file):
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(fine_tune(tiny_llama, qa_file), output_dir=str(tmp_path / "out"),
                                           max_samples=64, max_length=64, epochs=100, batch_size=4,
                                           benchmark=False, upload=False)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "finetune_cli.py"), "--answers", str(answers), "--defaults",
                             "--yes"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step "):  # training is under way (a line every 5% of the steps)
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    started = time.perf_counter()
    output = proc.stdout.read()
    assert proc.wait(timeout=30) == 130, output
    assert time.perf_counter() - started < 10  # not after finishing the remaining ~1400 steps
    assert "Cancelled." in output and "Traceback" not in output
    assert not (tmp_path / "out" / "model").exists()


def test_resume_on_a_finished_run_says_so(tmp_path, tiny_llama, qa_file):
    assert cli(tmp_path, **fine_tune(tiny_llama, qa_file))[0] == 0
    result = cli(tmp_path, "--resume", **fine_tune(tiny_llama, qa_file))
    assert_fails(result, "already finished; nothing to resume", "--benchmark-only")


def test_resume_without_a_checkpoint_says_so(tmp_path, tiny_llama, qa_file):
    assert_fails(cli(tmp_path, "--resume", **fine_tune(tiny_llama, qa_file)), "no checkpoint to resume",
                 "without --resume")
