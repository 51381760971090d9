"""What a finished run hands the user: the prompt format saved with the model, a model card whose
usage snippet runs, the summary panel, the loss curve and the chat."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from finetune_cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora_run_without_template(tmp_path_factory, tokenizer_dir, qa_file):
    """A LoRA run (adapter only) on a GPT-2 whose tokenizer has no chat template."""
    from transformers import AutoTokenizer

    from conftest import build_gpt2

    root = tmp_path_factory.mktemp("plain-gpt2")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    base = build_gpt2(root / "gpt2", tok, layers=2)
    assert not AutoTokenizer.from_pretrained(base).chat_template
    out = root / "out"
    answers = root / "answers.yaml"
    answers.write_text(yaml.safe_dump(dict(
        approach="fine-tuning", model=str(base), method="lora", output_dir=str(out), dataset=str(qa_file),
        max_samples=24, max_length=64, epochs=1, batch_size=8, gradient_accumulation=1, benchmark=False,
        upload=False, merge_adapter=False)))
    assert main(["--answers", str(answers), "--defaults", "--yes"]) == 0
    return out


def test_model_card_usage_snippet_runs_for_a_model_without_a_chat_template(lora_run_without_template):
    from finetuner.model_card import model_card
    from finetuner.wizard.gather import config_of

    out = lora_run_without_template
    card = model_card(config_of(str(out)), None, adapter=True)
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("USER/MODEL", str(out / "adapter"))
    exec(compile(code, "model-card-usage", "exec"), {})  # as a reader pastes it; raises if it fails


def test_saved_template_writes_the_prompt_exactly_as_training_did(lora_run_without_template, tokenizer_dir):
    from transformers import AutoTokenizer

    from finetuner.formatting import render_messages_prompt, render_prompt

    saved = AutoTokenizer.from_pretrained(lora_run_without_template / "adapter")
    plain = AutoTokenizer.from_pretrained(tokenizer_dir)
    plain.chat_template = None
    question = "What is 2 plus 3?"
    assert saved.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                     add_generation_prompt=True) == render_prompt(plain, question)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": question}]
    assert saved.apply_chat_template(history, tokenize=False, add_generation_prompt=True) == \
        render_messages_prompt(plain, history)


def test_adapter_readme_is_finetuners_card_not_pefts_template(lora_run_without_template):
    readme = (lora_run_without_template / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in readme
    assert "fine-tuned with LoRA" in readme and "## Usage" in readme


def test_summary_panel_says_where_the_model_is_and_what_to_run_next(lora_run_without_template, capsys):
    import json

    from finetuner import summary, ui

    out = lora_run_without_template
    (out / "benchmark.json").write_text(json.dumps({"models": [{"rouge": {"rougeL": 0.1}}],
                                                   "verdict": {"summary": "Distillation paid: kept 90%."}}))
    width, ui.console.width = ui.console.width, 300  # one command a line, as on a wide terminal
    try:
        summary.show(out, 12.0, 75.0, estimate=10.0)
    finally:
        (out / "benchmark.json").unlink()
        ui.console.width = width
    text = capsys.readouterr().out
    assert str(out / "adapter") in text and "LoRA adapter" in text
    assert "Distillation paid: kept 90%." in text
    assert "1m 15s in all, training 12s (the plan estimated 10s)" in text
    assert f"--chat {out}" in text and f"--upload-only {out}" in text and "AutoPeftModelForCausalLM" in text


def test_chat_streams_keeps_the_conversation_and_compares_in_a_pty(lora_run_without_template):
    import os
    import sys

    import pexpect

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(sys.executable, [str(ROOT / "finetune_cli.py"), "--chat", str(lora_run_without_template),
                                           "--compare", "--set", "max_new_tokens=8"], env=env, encoding="utf-8", timeout=90, dimensions=(40, 160))
    child.expect("you> ")
    child.send("What is 2 plus 3?\r")
    child.expect("trained model")  # the two answers side by side
    child.expect("base model")
    child.expect("you> ")
    child.send("/reset\r")
    child.expect("conversation forgotten")
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_chat_writes_each_turn_in_the_training_format(lora_run_without_template, tokenizer_dir):
    """Multi-turn: the second message is sent with the first exchange before it, as training wrote it."""
    from transformers import AutoTokenizer

    from finetuner import chat
    from finetuner.formatting import render_messages_prompt
    from finetuner.wizard.gather import config_of

    seen = []
    original = chat._encode

    def spy(tokenizer, messages):
        seen.append([dict(m) for m in messages])
        return original(tokenizer, messages)

    lines = iter(["first question", "second question", "/exit"])
    chat._encode = spy
    try:
        cfg = config_of(str(lora_run_without_template), {"max_new_tokens": 8})
        chat.run(cfg, lora_run_without_template, read=lambda _: next(lines))
    finally:
        chat._encode = original
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]
    plain = AutoTokenizer.from_pretrained(tokenizer_dir)
    plain.chat_template = None
    saved = AutoTokenizer.from_pretrained(lora_run_without_template / "adapter")
    assert render_messages_prompt(saved, seen[1]) == render_messages_prompt(plain, seen[1])


def test_loss_curve_gives_ce_and_kl_their_own_panels_with_held_out_points(tmp_path):
    from PIL import Image

    from finetuner.artifacts import plot_loss

    history = [{"step": s, "loss": 5 - s * 0.1, "ce": 3 - s * 0.05, "kl": 0.4 - s * 0.01} for s in range(1, 11)]
    history += [{"step": 5, "eval_loss": 4.8, "eval_ce": 2.9, "eval_kl": 0.38}]
    distilled = Image.open(plot_loss(history, tmp_path / "kd.png"))
    plain = Image.open(plot_loss([{k: v for k, v in e.items() if k in ("step", "loss", "eval_loss")}
                                  for e in history], tmp_path / "ft.png"))
    assert distilled.height > 2.5 * plain.height  # three panels (loss, CE, KL) against one


def test_progress_lines_label_elapsed_eta_epoch_lr_and_losses(capsys):
    from transformers import TrainerState

    from finetuner.progress import ProgressReporter

    reporter = ProgressReporter(interactive=False, every=1)
    state = TrainerState(max_steps=4, global_step=0, num_input_tokens_seen=0)
    reporter.on_train_begin(None, state, None)
    state.global_step, state.num_input_tokens_seen = 1, 500
    reporter.on_log(None, state, None, logs={"loss": 2.5, "ce": 2.0, "kl": 0.6, "learning_rate": 2e-4, "epoch": 0.25})
    reporter.on_train_end(None, state, None)
    text = capsys.readouterr().out
    for fragment in ("step 1/4", "elapsed", "ETA", "epoch 0.25", "lr 2.00e-04", "loss 2.5000", "CE 2.0000",
                     "KL 0.6000", "tok/s", "training took"):
        assert fragment in text, (fragment, text)


def test_library_warnings_go_to_the_log_and_one_dimmed_line(tmp_path, capsys):
    import logging
    import warnings

    from finetuner import noise

    with noise.routed_to_log(tmp_path):
        logging.getLogger("transformers.trainer").warning("There were missing keys in the checkpoint model "
                                                          "loaded: ['lm_head.weight'].")
        warnings.warn("`torch_dtype` is deprecated", FutureWarning)
    captured = capsys.readouterr()
    assert "lm_head.weight" not in captured.out + captured.err and "deprecated" not in captured.out + captured.err
    assert "2 library warnings went to" in captured.out
    log = (tmp_path / noise.LOG_FILE).read_text()
    assert "lm_head.weight" in log and "FutureWarning" in log


def test_a_finished_run_with_nothing_to_benchmark_says_so_and_succeeds(tmp_path, capsys):
    from finetune_cli import benchmark_stage
    from finetuner.config import RunConfig

    (tmp_path / "heldout.jsonl").write_text("")  # plain text holds out rows with no prompts to score
    benchmark_stage(RunConfig(output_dir=str(tmp_path)), show_samples=0)  # raised UserError (exit 1) before
    assert "Benchmark skipped" in capsys.readouterr().out
