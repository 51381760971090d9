"""RunConfig: the one home of every setting's type, default and allowed range.

An answers file, `--set` overrides and typed answers all become a RunConfig through
`coerce` (types) and `check_field` (ranges); `cross_check` covers rules that span fields.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, fields
from typing import Any, Optional

BUILTIN_MODEL = "smollm2-135m-instruct"
BUILTIN_DATASET = "gsm8k"
APPROACHES = ("fine-tuning", "distillation")
METHODS = ("lora", "qlora", "adalora")
QUANTIZATIONS = ("4bit", "8bit")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")  # finetuner.losses.DIVERGENCES (kept import-free here)
HIDDEN_STATE_LOSSES = ("mse", "cosine")
STUDENT_TRAINING = ("full", "lora", "qlora")  # qlora: distillation_mode responses only
DISTILLATION_MODES = ("logits", "responses", "hybrid")
REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
# A training row longer than max_length: cut at max_length (losing its end, EOS included), or left out.
LONG_ROWS = ("truncate", "drop")


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
    upload: bool = False
    hub_repo: Optional[str] = None
    hub_private: bool = True
    # Teacher cache : the teacher's top-k per counted position, written once to a directory
    teacher_cache: Optional[str] = None
    teacher_top_k: int = 64
    # What the student learns from : the divergence, on-policy batches, hidden states
    divergence: str = "forward_kl"
    jsd_beta: float = 0.5  # TRL generalized_jsd_loss beta: 0 forward KL, 1 reverse KL
    on_policy_fraction: float = 0.0  # GKD's lmbda: share of batches whose responses the student writes
    on_policy_temperature: float = 1.0
    on_policy_max_new_tokens: int = 128
    hidden_state_weight: float = 0.0  # 0 = off
    hidden_state_loss: str = "mse"
    hidden_state_layers: str = "auto"  # or "student:teacher" decoder-layer pairs, e.g. "3:7,7:15"
    # Teachers that write : sequence-level distillation, API teachers, documents
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
    # Scaling out and memory : recompute activations in backward instead of keeping them;
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


def applies(key: str, answers: Any) -> bool:
    """Whether a setting means anything for these answers (a dict or a RunConfig)."""
    get = answers.get if isinstance(answers, dict) else lambda k, d=None: getattr(answers, k, d)
    distill = get("approach", "fine-tuning") == "distillation"
    method = get("method", "lora")
    if key in ("model", "method"):
        return not distill
    if key == "teacher_quantization":  # a local teacher's weights only
        return distill and not get("teacher_api_base")
    if key in ("teacher", "student", "student_layers", "student_training", "temperature", "alpha"):
        return distill and not (key in ("temperature", "alpha") and get("distillation_mode") == "responses")
    if key in ("distillation_mode", "teacher_api_base"):
        return distill
    if key == "teacher_cache":  # a cache holds distributions: a local teacher's logits
        return distill and get("distillation_mode", "logits") != "responses" and not get("teacher_api_base")
    if key == "teacher_top_k":
        return applies("teacher_cache", answers) and bool(get("teacher_cache"))
    matches_logits = distill and get("distillation_mode", "logits") != "responses"  # the teacher's distributions
    if key in ("divergence", "on_policy_fraction", "hidden_state_weight"):
        return matches_logits
    if key == "jsd_beta":
        return matches_logits and get("divergence", "forward_kl") == "jsd"
    if key in ("on_policy_temperature", "on_policy_max_new_tokens"):
        return matches_logits and (get("on_policy_fraction", 0.0) or 0.0) > 0
    if key in ("hidden_state_loss", "hidden_state_layers"):
        return matches_logits and (get("hidden_state_weight", 0.0) or 0.0) > 0
    if key == "teacher_api_key_env":
        return distill and bool(get("teacher_api_base"))
    if key.startswith("generation_") or key in ("questions_per_chunk", "chunk_tokens"):
        writes = distill and get("distillation_mode", "logits") in ("responses", "hybrid")
        if key in ("generation_concurrency", "generation_timeout", "generation_max_retries"):
            return writes and bool(get("teacher_api_base"))
        if key == "generation_batch_size":
            return writes and not get("teacher_api_base")
        if key == "generation_on_budget":
            return writes and get("generation_token_budget") is not None
        if key == "chunk_tokens":
            return writes and (get("questions_per_chunk") or 0) > 0
        return writes
    uses_lora = get("student_training", "full") in ("lora", "qlora") if distill else True
    if key in ("lora_r", "lora_alpha", "lora_dropout"):
        return uses_lora and (distill or method in ("lora", "qlora"))
    if key == "merge_adapter":
        return uses_lora
    if key == "quantization":
        return get("student_training") == "qlora" if distill else method == "qlora"
    if key in ("adalora_init_r", "adalora_target_r"):
        return not distill and method == "adalora"
    if key in ("dataset_config", "dataset_split", "dataset_files"):
        from finetuner.sources import dataset_kind

        return dataset_kind(get("dataset", BUILTIN_DATASET)) == "hub"
    if key == "benchmark":  # plain text has no prompts and answers to score
        from finetuner.sources import plain_text_dataset

        return not plain_text_dataset(get("dataset", BUILTIN_DATASET))
    if key in ("benchmark_samples", "max_new_tokens"):
        return bool(get("benchmark", True)) and applies("benchmark", answers)
    if key in ("hub_repo", "hub_private"):
        return bool(get("upload", False))
    if key == "sft_baseline":
        return distill
    return True


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
        if isinstance(raw, str) and raw.strip():
            return raw.strip()
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)
        raise ValueError(f"expected text, got {raw!r}")
    raise TypeError(f"no cast for {key}: {kind}")  # a bug: a field type coerce doesn't know


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def check_field(key: str, value: Any) -> str | None:
    """Why `value` is not allowed for `key`, or None when it is."""
    choices = {"approach": APPROACHES, "method": METHODS, "quantization": QUANTIZATIONS,
               "student_training": STUDENT_TRAINING, "divergence": DIVERGENCES,
               "hidden_state_loss": HIDDEN_STATE_LOSSES, "distillation_mode": DISTILLATION_MODES,
               "generation_on_budget": ("train", "stop"), "report_to": REPORT_TO,
               "long_rows": LONG_ROWS}
    if key == "teacher_quantization" and value is not None and value not in QUANTIZATIONS:
        return f"must be one of {', '.join(QUANTIZATIONS)}, or empty for the teacher's own precision (got {value!r})"
    if key in choices and value not in choices[key]:
        return f"must be one of {', '.join(choices[key])} (got {value!r})"
    if value is None:
        return None
    if key == "temperature" and not value > 0:
        return f"must be greater than 0 (got {value})"
    if key == "alpha" and not 0 <= value <= 1:
        return f"must be between 0 and 1 (got {value})"
    if key in ("jsd_beta", "on_policy_fraction") and not 0 <= value <= 1:
        return f"must be between 0 and 1 (got {value})"
    if key == "on_policy_temperature" and not value > 0:
        return f"must be greater than 0 (got {value})"
    if key == "hidden_state_weight" and not value >= 0:
        return f"must be 0 (off) or more (got {value})"
    if key == "hidden_state_layers":
        from finetuner.objectives.layer_map import parse_layer_pairs

        try:
            parse_layer_pairs(value)
        except ValueError as exc:
            return str(exc)
    if key == "learning_rate" and not 0 < value < 1:
        return f"must be between 0 and 1, exclusive (got {value})"
    if key == "lora_dropout" and not 0 <= value < 1:
        return f"must be in [0, 1) (got {value})"
    if key == "eval_fraction" and not 0 <= value < 1:
        return f"must be in [0, 1) (got {value})"
    at_least_one = ("epochs", "batch_size", "gradient_accumulation", "max_samples", "lora_r", "lora_alpha",
                    "adalora_init_r", "adalora_target_r", "benchmark_samples", "max_new_tokens", "max_steps", "save_steps",
                    "student_layers", "on_policy_max_new_tokens", "eval_steps",
                    "early_stopping_patience")
    if key in at_least_one and value < 1:
        return f"must be at least 1 (got {value})"
    if key == "teacher_top_k" and not 1 <= value <= 4096:
        return f"must be between 1 and 4096 (got {value}); 64 stores about 390 bytes a token"
    if key == "teacher_cache":
        from finetuner.sources import local_path

        if local_path(value).is_file():
            return f"{value} is a file; teacher_cache needs a directory"
    if key == "max_length" and value < 16:
        return f"must be at least 16 tokens (got {value})"
    if key == "generation_temperature" and not 0 <= value <= 2:
        return f"must be between 0 and 2 (got {value}); 0 is greedy"
    if key == "generation_top_p" and not 0 < value <= 1:
        return f"must be in (0, 1] (got {value})"
    if key in ("generation_max_new_tokens", "generation_concurrency", "generation_batch_size",
               "generation_token_budget", "chunk_tokens") and value < 1:
        return f"must be at least 1 (got {value})"
    if key == "questions_per_chunk" and not 0 <= value <= 50:
        return f"must be between 0 and 50 (got {value}); 0 means the dataset is not documents"
    if key == "generation_max_retries" and not 0 <= value <= 20:
        return f"must be between 0 and 20 (got {value})"
    if key == "generation_timeout" and not value > 0:
        return f"must be greater than 0 seconds (got {value})"
    if key == "teacher_api_base" and not re.match(r"^https?://[^\s/]+", value):
        return f"must be an http(s) URL such as http://127.0.0.1:8000/v1 (got {value!r})"
    if key == "teacher_api_key_env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return (f"must be the NAME of an environment variable, like OPENAI_API_KEY (got something else); "
                "never put the key itself here")
    if key == "hub_repo" and not _REPO_ID.match(value):
        return f"must look like 'username/model-name' (got {value!r})"
    if key == "report_to" and value != "none":
        from finetuner.tracking import missing_package

        return missing_package(value)
    if key == "dataset":
        from finetuner.sources import check_dataset

        return check_dataset(value)
    return None


def cross_check(cfg: Any) -> list[str]:
    """Rules that span fields. `cfg` may be a RunConfig or a dict of answers."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    problems = []
    distill = get("approach") == "distillation"
    if distill and get("teacher") == get("student") and get("student_layers") is None:
        problems.append("student_layers: the student is the teacher itself with all its layers; keep fewer "
                        "layers (student_layers) or choose a smaller student model")
    if distill and get("student_layers") is not None:
        from finetuner.sources import layer_count

        available = layer_count(get("student"))
        if available is not None and get("student_layers") > available:
            problems.append(f"student_layers: {get('student')} has only {available} layers "
                            f"(asked to keep {get('student_layers')})")
        elif get("teacher") == get("student") and available == get("student_layers"):
            problems.append("student_layers: keeping all the teacher's layers makes the student the teacher; "
                            "keep fewer")
    if not distill and get("method") == "adalora" and get("adalora_target_r", 8) > get("adalora_init_r", 12):
        problems.append("adalora_target_r: must not exceed adalora_init_r")
    if distill and (get("on_policy_fraction", 0.0) or 0.0) > 0 and get("teacher_cache", None):
        # The top-k cache holds the teacher's view of the dataset's own responses only.
        problems.append("on_policy_fraction: on-policy batches are written by the student during training, and "
                        "a teacher cache (teacher_cache) cannot score text it has never seen; set "
                        "on_policy_fraction to 0 or turn the cache off to use a live teacher")
    if distill and get("teacher_cache") and get("distillation_mode", "logits") != "responses":
        # The cache stores top-k log-probs for forward KL over k + 1 buckets, and no hidden states.
        if get("divergence", "forward_kl") != "forward_kl":
            problems.append(f"divergence: the teacher cache (teacher_cache) supports forward_kl only, not "
                            f"{get('divergence')}; set divergence forward_kl or turn the cache off")
        if (get("hidden_state_weight", 0.0) or 0.0) > 0:
            problems.append("hidden_state_weight: the teacher cache holds top-k probabilities, not hidden states; "
                            "set hidden_state_weight 0 or turn the cache off")
    if distill and (get("hidden_state_weight", 0.0) or 0.0) > 0:
        from finetuner.objectives.layer_map import layer_map, parse_layer_pairs
        from finetuner.sources import layer_count

        teacher_layers, student_layers = layer_count(get("teacher")), get("student_layers") or layer_count(get("student"))
        try:
            if parse_layer_pairs(get("hidden_state_layers", "auto")) and teacher_layers and student_layers:
                layer_map(get("hidden_state_layers"), student_layers, teacher_layers)
        except ValueError as exc:
            problems.append(f"hidden_state_layers: {exc}")
    if distill and get("teacher_api_base") and get("distillation_mode", "logits") != "responses":
        problems.append(f"distillation_mode: {get('distillation_mode', 'logits')} needs the teacher's weights, "
                        "and an API teacher only writes text; use distillation_mode responses")
    if distill and get("student_training") == "qlora" and (get("distillation_mode") != "responses"
                                                           or get("student_layers") is not None):
        problems.append("student_training: qlora trains a 4/8-bit student on the teacher's responses; it needs "
                        "distillation_mode responses and a whole student model (student_layers empty)")
    if get("questions_per_chunk") and not (distill and get("distillation_mode") in ("responses", "hybrid")):
        problems.append("questions_per_chunk: questions from documents need a teacher that writes "
                        "(approach distillation, distillation_mode responses or hybrid)")
    if get("dataset"):
        from finetuner.sources import DATA_EXTENSIONS, is_documents, local_path

        dataset = get("dataset")
        writes = distill and get("distillation_mode", "logits") in ("responses", "hybrid")
        if is_documents(dataset) and not writes:
            what = "a directory with no data files" if local_path(dataset).is_dir() else "a document"
            problems.append(f"dataset: {dataset} is {what} ({', '.join(DATA_EXTENSIONS)}), only documents to "
                            "read; give training rows, or let a teacher write questions from the documents "
                            "(approach distillation, distillation_mode responses, questions_per_chunk 3)")
        elif is_documents(dataset) and get("questions_per_chunk") == 0:  # None: not answered yet
            problems.append(f"dataset: {dataset} is read as documents; set questions_per_chunk (e.g. 3) "
                            "so the teacher writes questions from it")
    if get("eval_steps") is not None and get("eval_fraction", 0.1) == 0:
        problems.append("eval_steps: needs held-out rows to evaluate on; set eval_fraction above 0")
    if distill and get("sft_baseline") and get("distillation_mode", "logits") != "logits":
        problems.append("sft_baseline: compares plain fine-tuning with distillation from the teacher's logits; "
                        "it needs distillation_mode logits")
    if get("early_stopping_patience") is not None and get("eval_steps") is None:
        problems.append("early_stopping_patience: counts evaluations, so it needs eval_steps too")
    if get("upload") and not get("hub_repo"):
        problems.append("hub_repo: needed when upload is on (e.g. 'username/my-model')")
    return problems


def warnings_for(cfg: RunConfig) -> list[str]:
    """Allowed but unusual settings worth a word."""
    notes = []
    if cfg.is_distillation and not 1 <= cfg.temperature <= 5:
        notes.append(f"temperature {cfg.temperature} is outside the usual 1-5; soft targets will be "
                     f"{'nearly one-hot' if cfg.temperature < 1 else 'nearly uniform'}")
    if cfg.is_distillation and cfg.teacher_quantization:
        notes.append(f"teacher_quantization {cfg.teacher_quantization}: the teacher's probabilities change "
                     "slightly, so the student learns from a slightly worse teacher")
    return notes
