"""The recipe: what a RunConfig means, decided once, before "Start?".

A RunConfig holds the user's answers; the recipe holds the facts they add up to, each in one
place: which model trains and how (adapter, quantised base), where the teacher's signal comes
from, and how many optimizer steps that makes. The plan, memory plan, probe, training stage,
hub card and disk check all read it, so they cannot disagree.

Teacher signal, by source:
- `none`: fine-tuning, the SFT baseline (alpha 1 with no other teacher term), or responses only;
- `live`: the teacher's forward runs beside the student every step;
- `cache`: the teacher's top-k entries are read from `teacher_cache` (written first if incomplete).
`writes` is separate: in `responses` and `hybrid` the teacher first writes the training responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from finetuner.config import RunConfig
from finetuner.distributed import world_size


@dataclass(frozen=True)
class Recipe:
    trained: str  # the model whose weights train: the fine-tuned model, or the student
    derived_layers: int | None  # the student keeps this many of `trained`'s decoder layers
    adapter: str | None  # "lora" or "adalora"; None: every weight trains
    quantization: str | None  # the trained model's frozen base at "4bit"/"8bit" (QLoRA), else None
    teacher: str | None  # the teacher's name or path, when distilling
    writes: bool  # the teacher writes the training responses first
    signal: str  # where the teacher's distribution comes from while training: none, live or cache
    cache_complete: bool  # with signal "cache": the cache already holds every row, the teacher never loads
    teacher_quantization: str | None  # the live (or cache-building) teacher at 8/4 bits
    merges: bool  # an adapter is merged into a standalone model after training
    batch_size: int
    accumulation: int
    epochs: int
    max_steps: int | None
    gradient_checkpointing: bool
    processes: int = 1  # ranks under torchrun/accelerate; each trains on its share of the rows

    @classmethod
    def of(cls, cfg: RunConfig) -> "Recipe":
        distilling = cfg.is_distillation
        if distilling:
            adapter = "lora" if cfg.student_training in ("lora", "qlora") else None
            quantization = cfg.quantization if cfg.student_training == "qlora" else None
        else:
            adapter = "adalora" if cfg.method == "adalora" else "lora"
            quantization = cfg.quantization if cfg.method == "qlora" else None
        signal = _signal(cfg)
        return cls(trained=cfg.student if distilling else cfg.model,
                   derived_layers=cfg.student_layers if distilling else None,
                   adapter=adapter, quantization=quantization,
                   teacher=cfg.teacher if distilling else None,
                   writes=cfg.teacher_writes, signal=signal,
                   cache_complete=signal == "cache" and _cache_complete(cfg.teacher_cache),
                   teacher_quantization=cfg.teacher_quantization if signal != "none" else None,
                   # A LoRA student derived from the teacher has no base on disk, so it is always merged.
                   merges=adapter is not None and (cfg.merge_adapter or distilling),
                   batch_size=cfg.batch_size, accumulation=cfg.gradient_accumulation, epochs=cfg.epochs,
                   max_steps=cfg.max_steps, gradient_checkpointing=cfg.gradient_checkpointing,
                   processes=world_size())

    @property
    def distils(self) -> bool:
        return self.teacher is not None

    @property
    def runs_teacher(self) -> bool:
        """The teacher's forward costs time and memory in this run: live, or filling a cache."""
        return self.signal == "live" or (self.signal == "cache" and not self.cache_complete)

    def steps(self, train_rows: int) -> int:
        """Optimizer steps over `train_rows` rows."""
        if self.max_steps:
            return self.max_steps
        return max(1, self.steps_per_epoch(train_rows) * self.epochs)

    def steps_per_epoch(self, train_rows: int) -> int:
        rows_per_rank = math.ceil(train_rows / self.processes)  # the distributed sampler pads to equal shares
        return max(1, math.ceil(math.ceil(rows_per_rank / self.batch_size) / self.accumulation))

    def training_flops(self, tokens: float, label_tokens: float) -> float:
        """Training FLOPs for `tokens` input tokens of which `label_tokens` count in the loss.

        Forward is 2 FLOPs per parameter per token, backward 4 (2 with frozen weights, as under an
        adapter). With a teacher, finetuner runs both LM heads on counted positions only."""
        from finetuner import models

        student = models.parameter_count(self.trained, self.derived_layers)
        head = _head_params(self.trained)
        train_factor = 4 if self.adapter else 6
        if self.gradient_checkpointing:
            train_factor += 2  # the forward pass runs again during backward
        if not self.runs_teacher:
            return train_factor * student * tokens
        teacher = models.parameter_count(self.teacher)
        teacher_head = _head_params(self.teacher)
        body = train_factor * (student - head) * tokens + 2 * (teacher - teacher_head) * tokens
        heads = (train_factor * head + 2 * teacher_head) * label_tokens
        return body + heads


def _signal(cfg: RunConfig) -> str:
    if not cfg.is_distillation or cfg.distillation_mode == "responses" or cfg.trains_plainly:
        return "none"
    return "cache" if cfg.teacher_cache else "live"


def _cache_complete(directory: str | None) -> bool:
    from finetuner.teachers import topk_cache

    return bool(directory) and topk_cache.complete_manifest(Path(directory)) is not None


def _head_params(name: str) -> int:
    from finetuner import models

    config = models.load_config(name)
    return config.vocab_size * config.hidden_size
