"""Students derived from a teacher: which layers to keep, and the model that keeps them."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from finetuner.ui import UserError

from finetuner.models.loading import count_parameters, load_config

@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    layers: int
    hidden_size: int
    vocab_size: int



def layer_info(name: str) -> ModelInfo:
    """Size facts from the config alone, to check a plan before loading weights."""
    config = load_config(name)
    return ModelInfo(architecture=(config.architectures or [config.model_type])[0],
                     layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                     vocab_size=config.vocab_size)


def check_student_plan(teacher: str, student: str, student_layers: int | None) -> list[str]:
    """Raise for an impossible student, return warnings for an odd one (configs only).

    With `student_layers`, the student is derived from `student` by keeping that many layers.
    """
    base = layer_info(student)
    if student_layers is not None:
        if not 1 <= student_layers <= base.layers:
            raise UserError(f"student_layers must be between 1 and {base.layers} ({student} has "
                            f"{base.layers} layers), got {student_layers}")
        if student_layers == base.layers:
            return [f"student_layers {student_layers} keeps every layer: the student starts as a full copy"]
        return []
    big = layer_info(teacher)
    if base.layers >= big.layers and base.hidden_size >= big.hidden_size:
        return [f"the student ({base.layers} layers, width {base.hidden_size}) is not smaller than "
                f"the teacher ({big.layers} layers, width {big.hidden_size})"]
    return []


# ---- precision ------------------------------------------------------------------------------


def student_layer_indices(total: int, keep: int) -> list[int]:
    """`keep` evenly spaced layer indices out of `total`, first and last included."""
    if keep == 1:
        return [0]
    # Half-up rounding: Python's round() rounds half to even and could pick one index twice.
    return [math.floor(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]


def block_drop_candidates(total: int, keep: int) -> list[list[int]]:
    """Every way to keep `keep` of `total` layers by dropping one contiguous block, first and last kept."""
    drop = total - keep
    if drop == 0 or keep < 2:
        return [student_layer_indices(total, keep)]
    return [[i for i in range(total) if not start <= i < start + drop] for start in range(1, keep)]


def choose_student_layers(model, keep: int, batch: dict) -> tuple[list[int], float]:
    """Which layers a derived student keeps: of the students that drop one contiguous block of
    layers, the one with the lowest loss on `batch` (training rows; input_ids, attention_mask, labels).

    Why not every other layer (DistilBERT's recipe): in a decoder, each layer's output is the next
    one's input, and removing every other layer breaks that chain everywhere; removing one block
    breaks it once (Gromov et al. 2024, Minitron 2024). Measured on SmolLM2-135M-Instruct, 15 of
    30 layers, GSM8K (benchmarks/quality_study.py): perplexity before training 473,660 (every
    other) vs 319 (best block); after 20 distillation steps, 64.8 vs 13.0.
    """
    from finetuner import ui

    _, layers = layer_stack(model)
    best, best_loss = None, math.inf
    candidates = block_drop_candidates(len(layers), keep)
    for kept in ui.tracked(candidates, f"trying {len(candidates)} ways to keep {keep} layers"):
        candidate = derive_student(model, keep, kept)
        candidate.eval()
        with torch.inference_mode():
            loss = float(candidate(**batch).loss)
        del candidate
        if loss < best_loss:
            best, best_loss = kept, loss
    return best, best_loss


def layer_stack(model) -> tuple[str, nn.ModuleList]:
    """The decoder's layers, and their path from `model` (the prefix of their state_dict keys).

    Families keep them under different names (`model.layers`, `transformer.h`, `gpt_neox.layers`,
    ...), so no list of paths is kept: the stack is the decoder's shallowest ModuleList with one entry
    per configured layer.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "base_model", model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    total = getattr(config, "num_hidden_layers", None)
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    stacks = [(name, module) for name, module in decoder.named_modules()
              if isinstance(module, nn.ModuleList) and len(module) == total and name] if total else []
    if prefix is not None and stacks:
        name, layers = min(stacks, key=lambda item: item[0].count("."))
        return f"{prefix}.{name}" if prefix else name, layers
    arch = type(model).__name__
    raise UserError(f"can't derive a student from {arch}: its decoder has no list of its {total} layers",
                    hint="pick a separate student model")


def student_config(config, kept: list[int]):
    """A copy of a teacher's config for a student keeping the layers `kept`."""
    total = config.num_hidden_layers
    config = copy.deepcopy(config)
    config.num_hidden_layers = len(kept)  # GPT-2's attribute_map routes this to n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in kept]
    return config


def derive_student(model, keep_layers: int, kept: list[int] | None = None):
    """A new fp32 model keeping `keep_layers` decoder layers of `model`: those in `kept`, or
    evenly spaced ones (see `choose_student_layers` for a better choice).

    Built fresh from a shrunken config, so per-layer indices (the KV cache's `layer_idx`) and
    `config.layer_types` are right by construction; weights are copied from the kept layers.
    """
    path, layers = layer_stack(model)
    total = len(layers)
    if not 1 <= keep_layers <= total:
        raise UserError(f"student_layers must be between 1 and {total}, got {keep_layers}")
    kept = list(kept) if kept is not None else student_layer_indices(total, keep_layers)
    if len(kept) != keep_layers or sorted(set(kept)) != kept or not all(0 <= i < total for i in kept):
        raise ValueError(f"kept layers {kept} are not {keep_layers} distinct increasing indices below {total}")

    config = student_config(model.config, kept)
    config.dtype = torch.float32
    student = type(model)(config).to(torch.float32)

    prefix = path + "."
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) not in renumber:
                continue
            key = f"{prefix}{renumber[int(index)]}.{rest}"
        state[key] = value
    student.load_state_dict(state, strict=True)  # copies and casts to the student's fp32
    student.generation_config = copy.deepcopy(model.generation_config)
    return student

@functools.lru_cache(maxsize=64)  # the plan, its time estimate and the size note each ask, for the same models
def parameter_count(name: str, keep_layers: int | None = None) -> int:
    """Parameters of `name` (with only `keep_layers` decoder layers, for a derived student)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = load_config(name)
    if keep_layers is not None:  # which layers are kept does not change the count
        config = student_config(config, student_layer_indices(config.num_hidden_layers, keep_layers))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # from_config leaves a tied LM head separate; count it once, as on disk
    return count_parameters(model)
