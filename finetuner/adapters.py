"""LoRA, QLoRA and AdaLoRA: which modules to adapt, the peft configs, and one fix.

- `AdaLoraAllocator`: the Trainer never calls AdaLoRA's `update_and_allocate`, so without this
  callback the ranks never adapt.
"""

from __future__ import annotations

import warnings

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import TrainerCallback

from finetuner.models.quantization import keep_bnb_trainable

# Ordered target lists, keyed by a module name only that family has.
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("c_attn", ("c_attn", "c_proj", "c_fc")),  # GPT-2 (Conv1D)
    ("query_key_value", ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),  # GPT-NeoX, Falcon, BLOOM
    ("qkv_proj", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),  # Phi-3
    # Llama, Mistral, Qwen, Gemma (+ Phi's dense/fc1/fc2, OPT's out_proj/fc1/fc2)
    ("q_proj", ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "dense",
                "gate_proj", "up_proj", "down_proj", "fc1", "fc2")),
    ("query", ("query", "key", "value", "dense")),  # BERT-style
)
_NEVER = ("lm_head", "embed_out")  # output heads: adapting them is rarely wanted


def _linear_names(model) -> set[str]:
    """Last name components of linear-like modules (Linear, bnb Linear4bit/8bitLt, GPT-2 Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D))} - set(_NEVER)


def lora_target_modules(model) -> list[str] | str:
    """The projection modules to adapt, detected from names; "all-linear" when unrecognised."""
    present = _linear_names(model)
    for signature, targets in _FAMILIES:
        if signature in present:
            return [t for t in targets if t in present]
    return "all-linear"


def _uses_conv1d(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def lora_config(cfg, model) -> LoraConfig:
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_modules(model), bias="none", task_type="CAUSAL_LM",
                      # GPT-2's Conv1D stores weights transposed (in, out).
                      fan_in_fan_out=_uses_conv1d(model))


def adalora_schedule(total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal): 10% warm-up at full rank, 20% final at the target rank.

    Rounded down so tinit + tfinal < total_steps always leaves a budgeting phase, even for a
    one-step run (peft rejects a schedule without one).
    """
    return total_steps // 10, total_steps // 5


def adalora_config(cfg, model, total_steps: int) -> AdaLoraConfig:
    """AdaLoRA from init_r down to an average of target_r over `total_steps` optimizer steps."""
    if total_steps < 1:
        raise ValueError(f"AdaLoRA needs at least one optimizer step, got {total_steps}")
    tinit, tfinal = adalora_schedule(total_steps)
    return AdaLoraConfig(init_r=cfg.adalora_init_r, target_r=cfg.adalora_target_r,
                         total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=1,
                         # Not asked for AdaLoRA; like LoRA, peft scales updates by alpha / rank.
                         lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                         target_modules=lora_target_modules(model), task_type="CAUSAL_LM",
                         fan_in_fan_out=_uses_conv1d(model))


def apply_adapter(settings, model, adapter: str = "lora", quantized: bool = False, total_steps: int | None = None):
    """Wrap `model` in `adapter` ("lora" or "adalora"); only adapter weights stay trainable.

    `settings` holds peft's numbers (lora_r, lora_alpha, lora_dropout, adalora_init_r, adalora_target_r).
    `quantized`: QLoRA; `model` must already be loaded at 4/8 bits (models.load_model(quantization=...)).
    """
    with warnings.catch_warnings():
        # peft reads `is_gradient_checkpointing`, which transformers 5 deprecated; harmless.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        if adapter == "adalora":
            if total_steps is None:
                raise ValueError("AdaLoRA needs total_steps (optimizer steps) for its rank budget")
            return get_peft_model(model, adalora_config(settings, model, total_steps))
        if quantized:
            return _apply_qlora(settings, model)
        return get_peft_model(model, lora_config(settings, model))


def _apply_qlora(cfg, model):
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        raise ValueError("QLoRA needs a model loaded with quantization='4bit' or '8bit'")
    # No activation checkpointing: it buys memory with ~30% more compute, and the models a CPU
    # can train fit in memory anyway. The Trainer's gradient_checkpointing can still turn it on.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config(cfg, model))
    keep_bnb_trainable(model)
    return model


# ---- AdaLoRA --------------------------------------------------------------------------------

class AdaLoraAllocator(TrainerCallback):
    """Runs AdaLoRA's rank allocation after every optimizer step.

    transformers 5.23's Trainer calls on_optimizer_step right after optimizer.step() and before
    model.zero_grad(): the gradients that update_and_allocate scores importance with still exist.
    state.global_step there is the 0-based index of the step just taken, as peft expects.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # The budget schedule must end with training; follow the Trainer's exact step count.
        config = _adalora_config(model)
        if config is not None and state.max_steps > 0 and config.total_step != state.max_steps:
            config.total_step = state.max_steps
            config.tinit, config.tfinal = adalora_schedule(state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        if _adalora_config(model) is not None:
            model.base_model.update_and_allocate(state.global_step)


def _adalora_config(model) -> AdaLoraConfig | None:
    model = getattr(model, "module", model)
    configs = getattr(model, "peft_config", None) or {}
    config = configs.get(getattr(model, "active_adapter", "default"))
    return config if isinstance(config, AdaLoraConfig) else None


def adalora_ranks(model) -> dict[str, int]:
    """Current rank of every AdaLoRA module, keyed by module name."""
    from peft.tuners.adalora import AdaLoraLayer

    config = _adalora_config(model)
    adapter = getattr(model, "active_adapter", "default")
    pattern = (config.rank_pattern or {}) if config else {}
    ranks = {}
    for name, module in model.named_modules():
        if not isinstance(module, AdaLoraLayer) or adapter not in module.lora_E:
            continue
        short = name.removeprefix("base_model.model.")
        # rank_pattern keys are lora_E parameter names inside the wrapped model, with or
        # without the adapter name.
        mask = pattern.get(f"{short}.lora_E.{adapter}", pattern.get(f"{short}.lora_E"))
        ranks[short] = int(sum(bool(m) for m in mask)) if mask is not None else module.lora_E[adapter].shape[0]
    return ranks

