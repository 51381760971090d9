"""What the student learns from (issue 13): on-policy samples really come from the student, the
hidden-state layer map, its projection, and a saved student without the projection."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from finetune_cli import main
from finetuner.data.preparing import make_collator
from finetuner.losses import kd_loss
from finetuner.objectives.hidden_states import HiddenStateLoss
from finetuner.objectives.layer_map import describe, layer_map, parse_layer_pairs
from finetuner.objectives.on_policy import OnPolicySampler, prompt_ids, why_not_on_policy

FORCED = 7  # the token a forced student always writes


def forced_student(path, token: int = FORCED):
    """A tiny Llama whose LM head is a zero matrix plus a bias that makes `token` certain:
    every sample it writes is recognisable."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.tie_word_embeddings = False
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)
        head.bias[token] = 30.0
    model.lm_head = head
    return model


def qa_batch(tokenizer, rows=(("What is 3 plus 4?", "3 plus 4 is 7."), ("What is 12 plus 9?", "21."))):
    features = []
    for question, answer in rows:
        prompt = tokenizer(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        response = tokenizer(f"{answer}<|im_end|>")["input_ids"]
        features.append({"input_ids": prompt + response, "attention_mask": [1] * (len(prompt) + len(response)),
                         "labels": [-100] * len(prompt) + response})
    return dict(make_collator(tokenizer)(features)), [len(tokenizer(
        f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]) for q, _ in rows]


def test_on_policy_batches_are_the_students_samples(tiny_llama_small, tokenizer):
    inputs, prompt_lengths = qa_batch(tokenizer)
    student = forced_student(tiny_llama_small).train()
    sampler = OnPolicySampler(1.0, temperature=1.0, max_new_tokens=5, max_length=64,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    samples = sampler.sample(student, inputs)
    assert student.training, "back to train mode after sampling"
    new = samples.inputs
    for row, length in enumerate(prompt_lengths):
        assert torch.equal(new["input_ids"][row, :length], prompt_ids(inputs)[row])  # the batch's prompt
        assert new["labels"][row, :length].eq(-100).all()  # the prompt never counts
        assert new["labels"][row, length:length + 5].tolist() == [FORCED] * 5  # the student's writing
    assert samples.mean_length == 5 and samples.capped == 1.0  # no EOS: stopped by the cap

    # A student that writes EOS at once: the EOS is graded, nothing after it, nothing capped.
    eos_student = forced_student(tiny_llama_small, token=tokenizer.eos_token_id)
    stopped = sampler.sample(eos_student, inputs)
    assert stopped.mean_length == 1 and stopped.capped == 0.0
    counted = stopped.inputs["labels"][stopped.inputs["labels"] != -100]
    assert counted.tolist() == [tokenizer.eos_token_id] * 2


@pytest.mark.parametrize("lora", [False, True])
def test_on_policy_samples_ignore_the_generation_settings_a_model_ships_with(tiny_llama_small, tokenizer, lora):
    """A Hub model's generation_config may ban repeats or penalise them; the student's samples must
    still come from its own distribution, the one the teacher's grading trains."""
    inputs, prompt_lengths = qa_batch(tokenizer)
    student = forced_student(tiny_llama_small).train()
    shipped = student.generation_config
    shipped.no_repeat_ngram_size, shipped.repetition_penalty, shipped.top_k = 1, 100.0, 1
    if lora:
        from peft import LoraConfig, get_peft_model

        student = get_peft_model(student, LoraConfig(r=4, target_modules="all-linear"))
    sampler = OnPolicySampler(1.0, temperature=1.0, max_new_tokens=5, max_length=64,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = sampler.sample(student, inputs).inputs
    for row, length in enumerate(prompt_lengths):
        # no_repeat_ngram_size=1 would forbid writing the forced token a second time
        assert new["labels"][row, length:length + 5].tolist() == [FORCED] * 5
    assert student.generation_config is shipped and shipped.no_repeat_ngram_size == 1  # left as it was


def test_on_policy_needs_prompts():
    assert "plain text has none" in why_not_on_policy("text")
    assert why_not_on_policy("pairs") is None and why_not_on_policy("chat") is None


@pytest.mark.parametrize("lora", [False, True])
def test_on_policy_training_step_scores_student_text(tiny_llama, tiny_llama_small, tokenizer, tmp_path, lora):
    # Every batch on-policy: the first logged loss must be T^2 * D(teacher, student) on the
    # student's forced samples, and the teacher must stay untouched.
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainingArguments

    from finetuner.teachers.signal import LiveTeacher
    from finetuner.training.distill_trainer import DistillationTrainer

    inputs, _ = qa_batch(tokenizer)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    student = forced_student(tiny_llama_small)
    if lora:
        from peft import LoraConfig, get_peft_model

        student = get_peft_model(student, LoraConfig(r=4, target_modules="all-linear", modules_to_save=["lm_head"]))
    sampler = OnPolicySampler(1.0, 1.0, max_new_tokens=4, max_length=64, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    expected_batch = OnPolicySampler(1.0, 1.0, 4, 64, tokenizer.eos_token_id, tokenizer.pad_token_id).sample(
        student, inputs).inputs
    with torch.no_grad():
        expected = kd_loss(student(input_ids=expected_batch["input_ids"],
                                   attention_mask=expected_batch["attention_mask"]).logits,
                           teacher(input_ids=expected_batch["input_ids"],
                                   attention_mask=expected_batch["attention_mask"]).logits,
                           expected_batch["labels"], temperature=2.0, alpha=0.0, divergence="reverse_kl")
    rows = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(2)]
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, logging_steps=1,
                             report_to=[], use_cpu=True, save_strategy="no", learning_rate=1e-3,
                             disable_tqdm=True, remove_unused_columns=False)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=Dataset.from_list(rows),
                                  data_collator=make_collator(tokenizer),
                                  teacher=LiveTeacher(teacher, 2.0, None, "reverse_kl"), alpha=0.5, on_policy=sampler)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["loss"] == pytest.approx(expected.loss.item(), rel=1e-3)
    assert logs[0]["on_policy"] == 1.0 and logs[0]["gen_len"] == 4 and logs[0]["gen_capped"] == 1.0
    # The student's CE on its own samples is not the reference CE the curve shows: every batch was
    # on-policy, so no CE is logged at all.
    assert "ce" not in logs[0] and "kl" in logs[0]
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(before[n], p) for n, p in student.named_parameters() if p.requires_grad)


def test_layer_map_derived_separate_and_explicit():
    assert parse_layer_pairs("auto") is None
    assert parse_layer_pairs(" 3:7, 7:15 ") == [(3, 7), (7, 15)]
    for bad in ("3-7", "a:b", "1:2,1:3", ""):
        with pytest.raises(ValueError):
            parse_layer_pairs(bad)
    # A derived student learns from the layers it was copied from.
    assert layer_map("auto", 3, 6, kept=[0, 2, 5]) == [(0, 0), (1, 2), (2, 5)]
    # A separate student spreads evenly; its last layer meets the teacher's last.
    assert layer_map("auto", 4, 8) == [(0, 1), (1, 3), (2, 5), (3, 7)]
    assert layer_map("auto", 15, 30)[-1] == (14, 29)
    assert layer_map("0:3", 2, 4) == [(0, 3)]
    with pytest.raises(ValueError, match="out of range"):
        layer_map("2:3", 2, 4)
    assert describe([(0, 1), (1, 3)]) == "0->1, 1->3"


def test_hidden_state_loss_values_and_projection():
    states = [torch.randn(2, 5, 4) for _ in range(2)]
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    same = HiddenStateLoss([(0, 0), (1, 1)], 4, 4, "mse")
    assert same.projections is None
    assert same(states, states, mask).item() == 0.0
    shifted = [s + 2.0 for s in states]
    assert same(states, shifted, mask).item() == pytest.approx(4.0 * 8)  # 8 counted positions, (2^2) each
    cosine = HiddenStateLoss([(0, 0)], 4, 4, "cosine")
    assert cosine(states, [s * 3 for s in states], mask).item() == pytest.approx(0.0, abs=1e-5)  # scale-free
    assert cosine(states, [-s for s in states], mask).item() == pytest.approx(16.0, rel=1e-5)

    wide = [torch.randn(2, 5, 8) for _ in range(2)]
    projected = HiddenStateLoss([(1, 0)], 4, 8, "mse")
    assert len(projected.projections) == 1 and projected.projections[0].weight.shape == (8, 4)
    projected(states, wide, mask).backward()
    assert projected.projections[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mse or cosine"):
        HiddenStateLoss([(0, 0)], 4, 4, "l1")


def test_hidden_states_train_a_narrower_student_and_save_without_projection(tmp_path, tiny_llama, tokenizer,
                                                                            qa_file):
    from conftest import build_llama

    narrow = build_llama(tmp_path / "narrow", tokenizer, layers=2, hidden=32, seed=3)
    answers = dict(output_dir=str(tmp_path / "out"), approach="distillation", teacher=str(tiny_llama),
                   student=str(narrow), student_layers=None, dataset=str(qa_file), max_samples=32, max_length=64,
                   epochs=1, batch_size=8, gradient_accumulation=1, learning_rate=3e-3, benchmark=False,
                   upload=False, seed=0, hidden_state_weight=0.5, hidden_state_loss="cosine",
                   divergence="jsd", jsd_beta=0.5, save_steps=2)
    path = tmp_path / "answers.yaml"
    path.write_text(yaml.safe_dump(answers))
    assert main(["--answers", str(path), "--defaults", "--yes"]) == 0
    out = tmp_path / "out"
    log = [e for e in json.loads((out / "training_log.json").read_text())["log_history"] if "loss" in e]
    assert log and all({"ce", "kl", "hidden"} <= set(e) for e in log), "each term logged on its own"
    assert log[-1]["hidden"] < log[0]["hidden"], log  # the projection and the student learn to match
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert not any("proj" in k and "layers" not in k for k in saved), sorted(saved)
    assert json.loads((out / "model" / "config.json").read_text())["hidden_size"] == 32
    # --resume needs the projection as it was: each checkpoint holds it beside the student.
    from finetuner.objectives.hidden_states import CHECKPOINT_FILE

    projection = torch.load(out / "checkpoints" / "checkpoint-2" / CHECKPOINT_FILE)
    assert projection["projections.0.weight"].shape == (64, 32)


def test_on_policy_with_plain_text_is_refused_before_start(tmp_path, tiny_llama, tiny_llama_small):
    """Plain text has no prompts for the student to answer: refused at the plan, not an IndexError at step 1."""
    from finetuner import plan, ui
    from finetuner.config import RunConfig

    text = tmp_path / "notes.txt"
    text.write_text("".join(f"Line {i} of some notes about adding {i} and {i + 1}.\n" for i in range(40)))
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama_small),
                    student_layers=None, dataset=str(text), on_policy_fraction=0.5, alpha=0.5,
                    output_dir=str(tmp_path / "out"), max_length=64)
    with pytest.raises(ui.UserError, match="prompts"):
        plan.preflight(cfg)


def test_plan_shows_the_layer_map(tiny_llama, tiny_llama_small):
    from finetuner.config import RunConfig
    from finetuner.objectives.layer_map import plan_rows

    common = dict(approach="distillation", teacher=str(tiny_llama), hidden_state_weight=0.5)
    separate = plan_rows(RunConfig(**common, student=str(tiny_llama_small), student_layers=None))
    assert separate[0][1] == "student -> teacher layer: 0->1, 1->3"  # 2 layers spread over 4
    derived = plan_rows(RunConfig(**common, student=str(tiny_llama), student_layers=2))
    assert "copied from" in derived[0][1]
    explicit = plan_rows(RunConfig(**common, student=str(tiny_llama_small), student_layers=None,
                                   hidden_state_layers="1:2"))
    assert explicit[0][1].endswith("1->2")
    assert plan_rows(RunConfig(**{**common, "hidden_state_weight": 0.0}, student=str(tiny_llama_small),
                               student_layers=None)) == []
    with pytest.raises(ValueError, match="hidden_state_layers"):
        RunConfig(**common, student=str(tiny_llama_small), student_layers=None, hidden_state_layers="1-2")


def test_on_policy_refuses_a_teacher_cache():
    from finetuner.config_checks import cross_check

    answers = dict(approach="distillation", on_policy_fraction=0.5, teacher_cache="runs/cache", alpha=0.5)
    assert any("teacher cache" in p for p in cross_check(answers))
    assert not any("teacher cache" in p for p in cross_check({**answers, "on_policy_fraction": 0.0}))
