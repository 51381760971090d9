"""LoRA / QLoRA / AdaLoRA on real tiny models, the bitsandbytes CPU fix, and rank allocation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from finetuner import adapters, models
from finetuner.config import RunConfig
from finetuner.models.quantization import keep_bnb_trainable, quantization_available, quantization_config

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _trainable(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _grads(model, ids) -> dict[str, torch.Tensor]:
    """One training forward/backward; the gradient of every trainable parameter."""
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _nonzero(grads: dict[str, torch.Tensor]) -> int:
    return sum(1 for g in grads.values() if g.abs().sum() > 0)


def _generate(model, ids) -> None:
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)


@pytest.fixture
def ids(tokenizer):
    return tokenizer("What is 3 plus 4? 3 plus 4 is 7.", return_tensors="pt").input_ids


# ---- target modules -------------------------------------------------------------------------

def test_llama_targets_every_projection(tiny_llama):
    assert adapters.lora_target_modules(models.load_model(str(tiny_llama))) == LLAMA_TARGETS


def test_gpt2_targets_its_conv1d_layers(tiny_gpt2):
    assert adapters.lora_target_modules(models.load_model(str(tiny_gpt2))) == ["c_attn", "c_proj", "c_fc"]


def test_gpt_neox_targets():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64))
    assert adapters.lora_target_modules(neox) == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def test_unknown_names_fall_back_to_all_linear():
    odd = torch.nn.ModuleDict({"mixer": torch.nn.Linear(4, 4), "readout": torch.nn.Linear(4, 2)})
    assert adapters.lora_target_modules(odd) == "all-linear"


# ---- applying adapters ----------------------------------------------------------------------

def test_lora_trains_only_adapters(tiny_llama, ids):
    model = adapters.apply_adapter(RunConfig(method="lora", lora_r=4), models.load_model(str(tiny_llama)), "lora")
    trainable = _trainable(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == set(LLAMA_TARGETS)
    assert _nonzero(_grads(model, ids)) > 0


def test_gpt2_lora_uses_fan_in_fan_out(tiny_gpt2, ids):
    base = models.load_model(str(tiny_gpt2))
    assert adapters.lora_config(RunConfig(), base).fan_in_fan_out
    model = adapters.apply_adapter(RunConfig(), base)
    assert _nonzero(_grads(model, ids)) > 0


def test_a_lora_student_in_distillation_uses_plain_lora(tiny_llama):
    from finetuner.recipe import Recipe

    cfg = RunConfig(approach="distillation", student_training="lora", student_layers=2)
    recipe = Recipe.of(cfg)
    model = adapters.apply_adapter(cfg, models.load_model(str(tiny_llama)), recipe.adapter, recipe.quantization is not None)
    assert type(model.peft_config["default"]).__name__ == "LoraConfig"


@pytest.mark.parametrize("bits, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_qlora_trains_only_adapters_on_a_quantised_base(tiny_llama, ids, bits, layer):
    assert quantization_available(bits) is None
    base = models.load_model(str(tiny_llama), quantization=bits)
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == layer
    model = adapters.apply_adapter(RunConfig(method="qlora", quantization=bits), base, quantized=True)
    trainable = _trainable(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert _nonzero(_grads(model, ids)) > 0


def test_qlora_refuses_an_unquantised_model(tiny_llama):
    with pytest.raises(ValueError, match="quantization"):
        adapters.apply_adapter(RunConfig(method="qlora"), models.load_model(str(tiny_llama)), quantized=True)


def test_adalora_trains_only_adapters_at_init_rank(tiny_llama):
    cfg = RunConfig(method="adalora", adalora_init_r=6, adalora_target_r=2)
    model = adapters.apply_adapter(cfg, models.load_model(str(tiny_llama)), "adalora", total_steps=10)
    assert all(any(f".lora_{m}." in n for m in "ABE") for n in _trainable(model))
    ranks = adapters.adalora_ranks(model)
    assert len(ranks) == 4 * len(LLAMA_TARGETS) and set(ranks.values()) == {6}


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 100, 5000])
def test_adalora_schedule_always_leaves_a_budgeting_phase(tiny_llama_small, steps):
    # AdaLoraConfig itself rejects tinit >= total_step - tfinal.
    config = adapters.adalora_config(RunConfig(method="adalora"), models.load_model(str(tiny_llama_small)), steps)
    assert config.total_step == steps and config.tinit + config.tfinal < steps


# ---- the bitsandbytes CPU pitfall -------------------------------------------------------------

def _has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return has_avx512bf16()


@pytest.mark.skipif(not _has_avx512bf16(), reason="the packed path only exists on AVX512-BF16 CPUs")
@pytest.mark.filterwarnings("ignore:bitsandbytes::gemv_4bit")  # torch noticing the missing backward
def test_plain_bitsandbytes_stops_training_4bit_layers_after_generate(tiny_llama, ids):
    """The pitfall itself, on a model loaded without our fix."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32,
                                                quantization_config=quantization_config("4bit", models.precision_policy().teacher_dtype))
    model = get_peft_model(base, adapters.lora_config(RunConfig(lora_dropout=0.0), base))  # deterministic
    before = _grads(model, ids)
    _generate(model, ids)
    assert _nonzero(_grads(model, ids)) < _nonzero(before)  # gradients stop reaching early layers

    # Also repairs layers already repacked; best-effort, since packing rounded their block
    # scales to bf16, so the gradients come back close to, not equal to, the originals.
    keep_bnb_trainable(model)
    repaired = _grads(model, ids)
    assert _nonzero(repaired) == _nonzero(before)
    assert all(torch.allclose(repaired[n], before[n], rtol=0.05, atol=0.01) for n in before)


def test_qlora_4bit_keeps_learning_after_generate(tiny_llama, ids):
    model = adapters.apply_adapter(RunConfig(method="qlora", quantization="4bit", lora_dropout=0.0),
                                   models.load_model(str(tiny_llama), quantization="4bit"), quantized=True)
    before = _grads(model, ids)
    _generate(model, ids)
    after = _grads(model, ids)
    assert _nonzero(after) == _nonzero(before) > 0
    assert all(torch.allclose(after[n], before[n]) for n in before)


def _stderr_of(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


def test_bitsandbytes_import_noise_is_filtered():
    if _has_avx512bf16():  # the only CPUs where bitsandbytes looks for the optional kernel
        assert "kernels-community" in _stderr_of("import bitsandbytes")
    assert "kernels-community" not in _stderr_of("import finetuner.adapters, bitsandbytes")


# ---- AdaLoRA rank allocation in a real Trainer run --------------------------------------------

def test_adalora_allocator_changes_ranks_during_training(tiny_llama, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    cfg = RunConfig(method="adalora", adalora_init_r=6, adalora_target_r=2)
    # A wrong step count on purpose: the callback aligns the schedule with the Trainer's.
    model = adapters.apply_adapter(cfg, models.load_model(str(tiny_llama)), "adalora", total_steps=1000)
    before = adapters.adalora_ranks(model)
    assert set(before.values()) == {cfg.adalora_init_r}
    rows = [f"What is {a} plus {b}? {a} plus {b} is {a + b}." for a in range(1, 5) for b in range(1, 5)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                             learning_rate=1e-2, use_cpu=True, bf16=True, report_to=[],
                             save_strategy="no", disable_tqdm=True, logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(tokenizer(rows)),
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      callbacks=[adapters.AdaLoraAllocator()])
    trainer.train()

    after = adapters.adalora_ranks(model)
    assert model.peft_config["default"].total_step == 5
    assert after != before
    assert sum(after.values()) == len(after) * cfg.adalora_target_r  # the budget ends at target_r on average
