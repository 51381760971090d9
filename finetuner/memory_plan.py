"""How much memory a run needs, from model configs alone, before any weights load.

Per process, in bytes:
- teacher weights at its precision (fp16 on a GPU; bf16 on a CPU that multiplies faster in it,
  else fp32; or 8/4-bit when teacher_quantization says so);
- student weights (fp32 master weights; a QLoRA base at 8/4 bits), gradients (4 bytes a trainable
  parameter) and AdamW's two moments (8 bytes a trainable parameter);
- activations kept for backward: per token and layer about 34 x hidden + 8 x intermediate bytes
  under bf16/fp16 autocast (Korthikanti et al. 2022, with fused attention: no length^2 term),
  twice that where a CPU trains in fp32;
  with gradient checkpointing, only each layer's fp32 input plus one layer recomputed;
  LoRA adds about 10 bytes per adapted input feature and token (peft's fp32 input copy and dropout);
- the loss: DistillationTrainer's chunk buffers (about 6 x chunk x vocab x 4 bytes), or for plain
  fine-tuning the Trainer's full logits (batch x length x vocab, about 14 bytes each through the
  fp32 cross-entropy);
- the runtime: Python with torch and transformers on CPU (0.55 GB, measured), the CUDA context on a GPU.
Parameter counts are exact: each model is built on the meta device, which allocates nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.recipe import Recipe

GB = 1e9
RUNTIME_BYTES = {"cpu": int(0.55 * GB), "cuda": int(0.5 * GB)}
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.0, "4bit": 0.52}  # 4-bit: NF4 + double-quant scales
ADAMW_BYTES = 8
GRAD_BYTES = 4
FINE_TUNE_LOGIT_BYTES = 14  # bf16 logits, their fp32 copy, log-softmax and its gradient
LORA_INPUT_BYTES = 10  # measured: a LoRA run's activations over the formula, per adapted input feature
HEADROOM = 0.9  # plan to use at most 90% of free memory: allocator fragmentation, other processes


@dataclass(frozen=True)
class Shape:
    """What memory depends on, read from a config."""
    params: int  # tied weights once
    linear_params: int  # in the decoder layers' linear layers (what 8/4-bit quantises, what LoRA adapts)
    lora_per_rank: int  # trainable parameters of a rank-1 adapter on every decoder linear layer
    linear_inputs: int  # input features of all those linear layers together (what LoRA's dropout copies)
    layers: int
    hidden: int
    intermediate: int
    vocab: int


def shape_of(config) -> Shape:
    from accelerate import init_empty_weights
    from torch import nn
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not head]
    in_out = [(m.weight.shape[1], m.weight.shape[0]) if isinstance(m, nn.Linear) else tuple(m.weight.shape)
              for m in linears]
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return Shape(params=model.num_parameters(), linear_params=sum(i * o for i, o in in_out),
                 lora_per_rank=sum(i + o for i, o in in_out), linear_inputs=sum(i for i, _ in in_out), layers=config.num_hidden_layers, hidden=hidden,
                 intermediate=intermediate, vocab=head.weight.shape[0])


def compute_precision(device: str) -> str:
    """What the models compute in: 16 bits on a GPU (fp16 or bf16, the same bytes); on a CPU, bf16
    where it multiplies faster than fp32, else fp32 (models.precision_policy)."""
    if device == "cuda":
        return "fp16"
    from finetuner import models

    return "bf16" if models.cpu_uses_bf16() else "fp32"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process, by what holds them."""
    teacher: int
    student: int  # weights
    training_state: int  # gradients + AdamW moments
    activations: int
    loss: int
    runtime: int

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


def estimate(cfg: RunConfig, student: Shape, teacher: Shape | None = None, device: str = "cpu",
             shards: int = 1) -> MemoryEstimate:
    """Peak memory of one process; `shards` > 1 splits the student's weights and training state
    over that many processes (FSDP / DeepSpeed ZeRO-3)."""
    recipe = Recipe.of(cfg)
    quantized_base = recipe.quantization
    if quantized_base:
        weights = student.linear_params * WEIGHT_BYTES[quantized_base] + (student.params - student.linear_params) * 4
    else:
        weights = student.params * WEIGHT_BYTES["fp32"]
    if recipe.adapter:
        rank = cfg.adalora_init_r if recipe.adapter == "adalora" else cfg.lora_r
        trainable = student.lora_per_rank * rank
        weights += trainable * 4
    else:
        trainable = student.params
    state = trainable * (GRAD_BYTES + ADAMW_BYTES)

    tokens = cfg.batch_size * cfg.max_length
    per_layer = 34 * student.hidden + 8 * student.intermediate
    if cfg.gradient_checkpointing:  # each layer's fp32 input, and one layer's activations while recomputing it
        activations = tokens * (student.layers * 4 * student.hidden + per_layer)
    else:
        activations = tokens * student.layers * per_layer * (2 if compute_precision(device) == "fp32" else 1)
    activations += tokens * student.hidden * 4 * 3  # embeddings, final norm, the hidden states the loss reads
    if recipe.adapter:  # peft keeps each adapted layer's input again: fp32 copy, dropout output and mask
        kept_layers = 1 if cfg.gradient_checkpointing else student.layers
        activations += tokens * student.linear_inputs * kept_layers // student.layers \
            * (LORA_INPUT_BYTES if cfg.lora_dropout > 0 else 4)

    teacher_bytes = 0
    if teacher is not None:
        precision = cfg.teacher_quantization or compute_precision(device)
        teacher_bytes = teacher.params * WEIGHT_BYTES[precision]
        # Its forward keeps nothing for backward: one layer's working set and its final hidden states.
        activations += tokens * (4 * teacher.hidden + 3 * teacher.intermediate) * 2 + tokens * teacher.hidden * 2
        chunk = min(max(64, 2 ** 25 // teacher.vocab), tokens)  # DistillationTrainer.chunk_size
        loss = 6 * chunk * max(teacher.vocab, student.vocab) * 4
    else:
        loss = tokens * student.vocab * FINE_TUNE_LOGIT_BYTES
    return MemoryEstimate(teacher=int(teacher_bytes), student=int(weights / shards), training_state=int(state / shards),
                    activations=int(activations), loss=int(loss), runtime=RUNTIME_BYTES[device])


# ---- the plan shown before "Start?" ----------------------------------------------------------

def free_memory() -> tuple[str, int]:
    """The device training will use and its free memory in bytes (GPU: this process's current one)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.mem_get_info()[0]
    import psutil

    return "cpu", psutil.virtual_memory().available


def shapes(recipe: Recipe) -> tuple[Shape, Shape | None]:
    """The trained model's and, when its weights are held during the run (live, or filling a cache),
    the teacher's shapes, from their configs."""
    from finetuner import models

    config = models.load_config(recipe.trained)
    if recipe.derived_layers is not None:
        config = models.student_config(config, models.student_layer_indices(config.num_hidden_layers,
                                                                             recipe.derived_layers))
    return shape_of(config), shape_of(models.load_config(recipe.teacher)) if recipe.runs_teacher else None


def plan_rows(cfg: RunConfig) -> list[tuple[str, str]]:
    """Rows for the plan: what the run needs per process, what is free, and if it does not fit, what would."""
    student, teacher = shapes(Recipe.of(cfg))
    device, free = free_memory()
    return rows_for(cfg, student, teacher, device, free)


def rows_for(cfg: RunConfig, student: Shape, teacher: Shape | None, device: str, free: int) -> list[tuple[str, str]]:
    need = estimate(cfg, student, teacher, device)
    where = "GPU" if device == "cuda" else "CPU RAM"
    rows = []
    if teacher is not None:
        precision = cfg.teacher_quantization or compute_precision(device)
        rows.append(("memory: teacher weights", f"{ui.size(need.teacher)} ({precision})"))
    quantized = Recipe.of(cfg).quantization
    what = f"adapter + frozen {quantized} base" if quantized else "adapter + frozen base" if cfg.uses_lora else "fp32"
    rows += [("memory: student weights" if teacher is not None else "memory: model weights",
              f"{ui.size(need.student)} ({what})"),
             ("memory: gradients + AdamW", ui.size(need.training_state)),
             ("memory: activations", f"{ui.size(need.activations)} (batch {cfg.batch_size} x {cfg.max_length} tokens"
                                     f"{', gradient checkpointing' if cfg.gradient_checkpointing else ''})"),
             ("memory: loss buffers", ui.size(need.loss)),
             ("memory: total", f"about {ui.size(need.total)} of {ui.size(free)} free {where}: "
                               + ("fits" if fits(need, free) else "DOES NOT FIT"))]
    if not fits(need, free):
        rows += [("memory: to fit, try", choice) for choice in choices(cfg, student, teacher, device, free)]
    return rows


def fits(need: MemoryEstimate, free: int) -> bool:
    return need.total <= HEADROOM * free


def choices(cfg: RunConfig, student: Shape, teacher: Shape | None, device: str, free: int) -> list[str]:
    """Concrete changes that make the run fit, each checked with the same estimate."""
    def total(**changes) -> int:
        return estimate(dataclasses.replace(cfg, **changes), student, teacher, device).total

    found = []
    batch = cfg.batch_size // 2
    while batch >= 1:
        steps = cfg.gradient_accumulation * cfg.batch_size // batch
        if total(batch_size=batch, gradient_accumulation=steps) <= HEADROOM * free:
            found.append(f"batch_size {batch} with gradient_accumulation {steps} (the same effective batch): "
                         f"{ui.size(total(batch_size=batch, gradient_accumulation=steps))}")
            break
        batch //= 2
    if not cfg.gradient_checkpointing and total(gradient_checkpointing=True) <= HEADROOM * free:
        found.append(f"gradient_checkpointing: true (about a third slower): {ui.size(total(gradient_checkpointing=True))}")
    if cfg.is_distillation and not cfg.uses_lora and total(student_training="lora") <= HEADROOM * free:
        found.append(f"student_training: lora: {ui.size(total(student_training='lora'))}")
    if not cfg.is_distillation and cfg.method != "qlora" and total(method="qlora", quantization="4bit") <= HEADROOM * free:
        found.append(f"method: qlora with quantization 4bit: {ui.size(total(method='qlora', quantization='4bit'))}")
    if cfg.is_distillation and teacher is not None:
        for bits in ("8bit", "4bit"):
            if cfg.teacher_quantization != bits and total(teacher_quantization=bits) <= HEADROOM * free:
                found.append(f"teacher_quantization: {bits}: {ui.size(total(teacher_quantization=bits))} - the teacher's "
                             "probabilities change slightly, so the student learns a slightly worse teacher")
                break
    if device == "cuda":
        for gpus in (2, 4, 8, 16, 32, 64):
            shared = estimate(cfg, student, teacher, device, shards=gpus).total
            if shared <= HEADROOM * free:
                found.append(f"{gpus} GPUs with FSDP or DeepSpeed ZeRO-3 (--write-launch DIR): {ui.size(shared)} per GPU")
                break
    if not found:
        found.append("a smaller student or teacher: no single change above fits")
    return found

