"""RunConfig: the one home of every setting's type and default, and of when a setting applies.

An answers file, `--set` overrides and typed answers all become a RunConfig through
`coerce` (types) and `config_checks.check_field` (choices and ranges); `config_checks.cross_check`
covers rules that span fields.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, fields
from typing import Any, Optional

from finetuner.config_checks import CHOICES, check_field, cross_check
from finetuner.config_scope import BUILTIN_DATASET, BUILTIN_MODEL, applies  # noqa: F401  (re-exported)



@dataclass(frozen=True)
class RunConfig:
    approach: str = "fine-tuning"
    # Fine-tuning
    model: str = BUILTIN_MODEL
    method: str = "lora"
    # Distillation
    teacher: str = BUILTIN_MODEL
    student: str = BUILTIN_MODEL
    student_layers: Optional[int] = 15
    output_dir: str = "finetuner-output"
    # Data
    dataset: str = BUILTIN_DATASET
    dataset_config: Optional[str] = None
    dataset_split: str = "train"
    dataset_files: Optional[str] = None
    max_samples: int = 1000
    max_length: int = 512
    long_rows: str = "truncate"  # a training row over max_length: "truncate" (cut) or "drop" (axolotl's way)
    # Distillation settings
    temperature: float = 2.0
    alpha: float = 0.5
    student_training: str = "full"
    # Method settings
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    quantization: str = "4bit"
    adalora_init_r: int = 12
    adalora_target_r: int = 8
    # Training
    epochs: int = 3
    batch_size: int = 4
    learning_rate: float = 2e-4
    gradient_accumulation: int = 4
    # Benchmark and upload
    benchmark: bool = True
    benchmark_samples: int = 50
    task_metric: str = "auto"  # exact match of final answers: auto (when the references have one), exact_match, none
    judge_api_base: Optional[str] = None  # an OpenAI-compatible judge grading each answer 1-5; None = no judge
    judge_model: Optional[str] = None
    judge_api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never stored
    judge_token_budget: Optional[int] = None  # the judge's spend cap: prompt + completion tokens
    speculative_benchmark: str = "auto"  # time the teacher with the student as its draft: auto, true, false
    upload: bool = False
    hub_repo: Optional[str] = None
    hub_private: bool = True
    # Teacher cache: the teacher's top-k per counted position, written once to a directory
    teacher_cache: Optional[str] = None
    teacher_top_k: int = 8
    # What the student learns from: the divergence, on-policy batches, hidden states
    divergence: str = "forward_kl"
    jsd_beta: float = 0.5  # TRL generalized_jsd_loss beta: 0 forward KL, 1 reverse KL
    on_policy_fraction: float = 0.0  # GKD's lmbda: share of batches whose responses the student writes
    on_policy_temperature: float = 1.0
    on_policy_max_new_tokens: int = 128
    hidden_state_weight: float = 0.0  # 0 = off
    hidden_state_loss: str = "mse"
    hidden_state_layers: str = "auto"  # or "student:teacher" decoder-layer pairs, e.g. "3:7,7:15"
    # Teachers that write: sequence-level distillation, API teachers, documents
    distillation_mode: str = "logits"
    teacher_api_base: Optional[str] = None  # an OpenAI-compatible endpoint; None = a local teacher
    teacher_api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never stored
    questions_per_chunk: int = 0  # > 0: the dataset is documents the teacher writes questions from
    generation_max_new_tokens: int = 256
    generation_temperature: float = 0.0  # 0 = greedy
    generation_top_p: float = 1.0
    generation_concurrency: int = 8  # API requests in flight at once
    generation_batch_size: int = 8  # prompts per batch for a local teacher
    generation_token_budget: Optional[int] = None  # spend cap: prompt + completion tokens, all requests
    generation_on_budget: str = "train"  # when the cap is reached: train on what arrived, or stop
    generation_system_prompt: Optional[str] = None
    generation_drop_incomplete: bool = True  # drop empty responses and those cut off at the length limit
    generation_timeout: float = 120.0  # seconds per API request
    generation_max_retries: int = 4  # the openai client's retries (429 honouring Retry-After, 5xx, timeouts)
    chunk_tokens: int = 512  # document chunk size for questions_per_chunk
    generation_filters: str = "duplicates,refusals,echoes"  # comma list; "verified" keeps matching final answers
    generation_min_kept: float = 0.5  # stop before training when fewer responses survive; 0 = train on any
    generation_cache: Optional[str] = None  # a response directory shared across runs; None = in output_dir
    generation_price_in: Optional[float] = None  # price per million prompt tokens, for the cost estimate
    generation_price_out: Optional[float] = None  # price per million completion tokens
    # Scaling out and memory: recompute activations in backward instead of keeping them;
    # a teacher loaded in 8/4 bits (only when asked: it changes the teacher's probabilities)
    gradient_checkpointing: bool = False
    teacher_quantization: Optional[str] = None
    # Did it pay? A plain fine-tuning baseline, held-out evaluation, experiment tracking
    sft_baseline: bool = False  # distillation: also train the same student with alpha 1, benchmark both
    eval_steps: Optional[int] = None  # evaluate held-out loss every N steps; keep the best checkpoint
    early_stopping_patience: Optional[int] = None  # stop after N evaluations without improvement
    report_to: str = "none"  # the Trainer's own integrations
    # Advanced (answers file or --set only)
    eval_fraction: float = 0.1
    merge_adapter: bool = True
    max_steps: Optional[int] = None
    save_steps: int = 50
    seed: int = 42
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        problems = [f"{f.name}: {msg}" for f in fields(self)
                    if applies(f.name, self) and (msg := check_field(f.name, getattr(self, f.name)))]
        problems += cross_check(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def is_distillation(self) -> bool:
        return self.approach == "distillation"

    @property
    def teacher_writes(self) -> bool:
        """The teacher generates the training responses (sequence-level distillation)."""
        return self.is_distillation and self.distillation_mode in ("responses", "hybrid")

    @property
    def trains_plainly(self) -> bool:
        """A distillation run that needs nothing from the teacher: alpha 1 with no hidden-state or
        on-policy term is plain fine-tuning of the student (the SFT baseline); no teacher is loaded."""
        return self.is_distillation and self.alpha == 1 and not self.hidden_state_weight \
            and not self.on_policy_fraction

    @property
    def uses_lora(self) -> bool:
        return self.student_training in ("lora", "qlora") if self.is_distillation else True

    def to_answers(self) -> dict[str, Any]:
        """Only the settings that apply to this approach, in question order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if applies(k, self)}


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
_TYPES = typing.get_type_hints(RunConfig)

# QLoRA trains a frozen quantised base, so it wants a larger adapter (QLoRA paper: r 16/alpha 64).
_METHOD_DEFAULTS = {"qlora": {"lora_r": 16, "lora_alpha": 64}}


def default_for(key: str, answers: dict[str, Any]) -> Any:
    """The default of `key` given the answers so far (some defaults depend on the method)."""
    if key == "student_layers" and answers.get("student", BUILTIN_MODEL) != answers.get("teacher", BUILTIN_MODEL):
        return None
    if key == "student" and answers.get("teacher_api_base"):
        return BUILTIN_MODEL  # an API teacher has no weights to derive a student from
    if key == "student" and "teacher" in answers:
        return answers["teacher"]
    method = answers.get("method") if answers.get("approach", "fine-tuning") == "fine-tuning" else None
    overrides = _METHOD_DEFAULTS.get(method or "", {})
    if key in overrides:
        return overrides[key]
    return RunConfig.__dataclass_fields__[key].default


def coerce(key: str, raw: Any) -> Any:
    """Cast a raw answer (YAML value or `--set` string) to the field's type, or raise ValueError."""
    if key not in _TYPES:
        raise ValueError("unknown setting")
    kind = _TYPES[key]
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "null", "none", "~")):
            return None
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "y", "on", "1"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("false", "no", "n", "off", "0"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind is int:
        if isinstance(raw, bool):
            raise ValueError(f"expected a whole number, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            return int(raw)
        raise ValueError(f"expected a whole number, got {raw!r}")
    if kind is float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {raw!r}")
    if kind is str:
        if isinstance(raw, bool) and "true" in CHOICES.get(key, ()):  # YAML reads `true` as a bool
            return "true" if raw else "false"
        if isinstance(raw, str) and raw.strip():
            return raw.strip()
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)
        raise ValueError(f"expected text, got {raw!r}")
    raise TypeError(f"no cast for {key}: {kind}")  # a bug: a field type coerce doesn't know
