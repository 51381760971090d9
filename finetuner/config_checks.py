"""What each setting allows, which combinations of settings conflict, and which allowed ones are unusual.

`check_field` answers for one value (choices and ranges, as tables); `cross_check` runs the
rules that span fields; `warnings_for` names allowed but unusual settings of a RunConfig. The
first two take plain values or a dict of answers, so the wizard can check an answer before a
RunConfig exists; RunConfig runs them when it is built.
"""

from __future__ import annotations

import re
from typing import Any, Callable

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
TASK_METRICS = ("auto", "exact_match", "none")
SPECULATIVE = ("auto", "true", "false")
# Responses a teacher wrote that are left out before training (each counted in the summary).
GENERATION_FILTERS = ("duplicates", "refusals", "echoes", "verified")

CHOICES = {"approach": APPROACHES, "method": METHODS, "quantization": QUANTIZATIONS,
           "student_training": STUDENT_TRAINING, "divergence": DIVERGENCES,
           "hidden_state_loss": HIDDEN_STATE_LOSSES, "distillation_mode": DISTILLATION_MODES,
           "generation_on_budget": ("train", "stop"), "report_to": REPORT_TO, "long_rows": LONG_ROWS,
           "task_metric": TASK_METRICS, "speculative_benchmark": SPECULATIVE}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

# key -> (when a value is refused, why; formatted with the value)
_AT_LEAST_ONE = (lambda v: v < 1, "must be at least 1 (got {value})")
_UNIT = (lambda v: not 0 <= v <= 1, "must be between 0 and 1 (got {value})")
_POSITIVE = (lambda v: not v > 0, "must be greater than 0 (got {value})")
_FRACTION = (lambda v: not 0 <= v < 1, "must be in [0, 1) (got {value})")
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": _POSITIVE,
    "on_policy_temperature": _POSITIVE,
    "alpha": _UNIT,
    "jsd_beta": _UNIT,
    "on_policy_fraction": _UNIT,
    "hidden_state_weight": (lambda v: not v >= 0, "must be 0 (off) or more (got {value})"),
    "learning_rate": (lambda v: not 0 < v < 1, "must be between 0 and 1, exclusive (got {value})"),
    "lora_dropout": _FRACTION,
    "eval_fraction": _FRACTION,
    **dict.fromkeys(("epochs", "batch_size", "gradient_accumulation", "max_samples", "lora_r", "lora_alpha",
                     "adalora_init_r", "adalora_target_r", "benchmark_samples", "max_new_tokens", "max_steps",
                     "save_steps", "student_layers", "on_policy_max_new_tokens", "eval_steps",
                     "early_stopping_patience", "generation_max_new_tokens", "generation_concurrency",
                     "generation_batch_size", "generation_token_budget", "chunk_tokens",
                     "judge_token_budget"), _AT_LEAST_ONE),
    "generation_min_kept": _UNIT,
    **dict.fromkeys(("generation_price_in", "generation_price_out"),
                    (lambda v: v < 0, "must be 0 or more (a price per million tokens; got {value})")),
    "teacher_top_k": (lambda v: not 1 <= v <= 4096,
                      "must be between 1 and 4096 (got {value}); 64 stores about 390 bytes a token"),
    "max_length": (lambda v: v < 16, "must be at least 16 tokens (got {value})"),
    "generation_temperature": (lambda v: not 0 <= v <= 2, "must be between 0 and 2 (got {value}); 0 is greedy"),
    "generation_top_p": (lambda v: not 0 < v <= 1, "must be in (0, 1] (got {value})"),
    "questions_per_chunk": (lambda v: not 0 <= v <= 50,
                            "must be between 0 and 50 (got {value}); 0 means the dataset is not documents"),
    "generation_max_retries": (lambda v: not 0 <= v <= 20, "must be between 0 and 20 (got {value})"),
    "generation_timeout": (lambda v: not v > 0, "must be greater than 0 seconds (got {value})"),
    **dict.fromkeys(("teacher_api_base", "judge_api_base"), (
        lambda v: not re.match(r"^https?://[^\s/]+", v),
        "must be an http(s) URL such as http://127.0.0.1:8000/v1 (got {value!r})")),
    **dict.fromkeys(("teacher_api_key_env", "judge_api_key_env"), (
        lambda v: not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v),
        "must be the NAME of an environment variable, like OPENAI_API_KEY (got something else); never put the "
        "key itself here")),
    "hub_repo": (lambda v: not _REPO_ID.match(v), "must look like 'username/model-name' (got {value!r})"),
}


def _layer_pairs_problem(value: str) -> str | None:
    from finetuner.objectives.layer_map import parse_layer_pairs

    try:
        parse_layer_pairs(value)
    except ValueError as exc:
        return str(exc)
    return None


def _teacher_cache_problem(value: str) -> str | None:
    from finetuner.sources import local_path

    return f"{value} is a file; teacher_cache needs a directory" if local_path(value).is_file() else None


def _report_to_problem(value: str) -> str | None:
    from finetuner.tracking import missing_package

    return missing_package(value) if value != "none" else None


def _filters_problem(value: str) -> str | None:
    unknown = [name for name in value.split(",") if name.strip() not in GENERATION_FILTERS + ("none",)]
    return f"unknown filter {unknown[0].strip()!r}; choose from {', '.join(GENERATION_FILTERS)}, or none" \
        if unknown else None


def _dataset_problem(value: str) -> str | None:
    from finetuner.sources import check_dataset

    return check_dataset(value)


# Checks that look outside the value: the layer-pair syntax, the disk, installed packages.
_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "hidden_state_layers": _layer_pairs_problem, "teacher_cache": _teacher_cache_problem,
    "report_to": _report_to_problem, "dataset": _dataset_problem, "generation_filters": _filters_problem,
}


def check_field(key: str, value: Any) -> str | None:
    """Why `value` is not allowed for `key`, or None when it is."""
    if key == "teacher_quantization" and value is not None and value not in QUANTIZATIONS:
        return f"must be one of {', '.join(QUANTIZATIONS)}, or empty for the teacher's own precision (got {value!r})"
    if key in CHOICES and value not in CHOICES[key]:
        return f"must be one of {', '.join(CHOICES[key])} (got {value!r})"
    if value is None:
        return None
    if key in LIMITS:
        refused, why = LIMITS[key]
        return why.format(value=value) if refused(value) else None
    return _CHECKS[key](value) if key in _CHECKS else None


# ---- rules that span fields -------------------------------------------------------------------

Get = Callable[..., Any]  # get(key, default=None), over a RunConfig or a dict of answers


def cross_check(cfg: Any) -> list[str]:
    """Rules that span fields. `cfg` may be a RunConfig or a dict of answers."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    problems: list[str] = []
    for rule in (_student_layers, _adalora, _teacher_cache, _hidden_state_layers, _teacher_writes, _documents,
                 _evaluation, _upload, _judge, _speculative):
        problems += rule(get)
    return problems


def _student_layers(get: Get) -> list[str]:
    if get("approach") != "distillation":
        return []
    if get("teacher") == get("student") and get("student_layers") is None:
        return ["student_layers: the student is the teacher itself with all its layers; keep fewer "
                "layers (student_layers) or choose a smaller student model"]
    if get("student_layers") is None:
        return []
    from finetuner.sources import layer_count

    available = layer_count(get("student"))
    if available is not None and get("student_layers") > available:
        return [f"student_layers: {get('student')} has only {available} layers "
                f"(asked to keep {get('student_layers')})"]
    if get("teacher") == get("student") and available == get("student_layers"):
        return ["student_layers: keeping all the teacher's layers makes the student the teacher; keep fewer"]
    return []


def _adalora(get: Get) -> list[str]:
    if get("approach") != "distillation" and get("method") == "adalora" \
            and get("adalora_target_r", 8) > get("adalora_init_r", 12):
        return ["adalora_target_r: must not exceed adalora_init_r"]
    return []


def _teacher_cache(get: Get) -> list[str]:
    """The cache holds top-k log-probs of the teacher on the dataset's own responses, for forward KL
    over k + 1 buckets: no text it has never seen, no other divergence, no hidden states."""
    if get("approach") != "distillation" or not get("teacher_cache"):
        return []
    problems = []
    if (get("on_policy_fraction", 0.0) or 0.0) > 0:
        problems.append("on_policy_fraction: on-policy batches are written by the student during training, and "
                        "a teacher cache (teacher_cache) cannot score text it has never seen; set "
                        "on_policy_fraction to 0 or turn the cache off to use a live teacher")
    if get("distillation_mode", "logits") == "responses":
        return problems
    if get("divergence", "forward_kl") != "forward_kl":
        problems.append(f"divergence: the teacher cache (teacher_cache) supports forward_kl only, not "
                        f"{get('divergence')}; set divergence forward_kl or turn the cache off")
    if (get("hidden_state_weight", 0.0) or 0.0) > 0:
        problems.append("hidden_state_weight: the teacher cache holds top-k probabilities, not hidden states; "
                        "set hidden_state_weight 0 or turn the cache off")
    return problems


def _hidden_state_layers(get: Get) -> list[str]:
    if get("approach") != "distillation" or not (get("hidden_state_weight", 0.0) or 0.0) > 0:
        return []
    from finetuner.objectives.layer_map import layer_map, parse_layer_pairs
    from finetuner.sources import layer_count

    teacher_layers, student_layers = layer_count(get("teacher")), get("student_layers") or layer_count(get("student"))
    try:
        if parse_layer_pairs(get("hidden_state_layers", "auto")) and teacher_layers and student_layers:
            layer_map(get("hidden_state_layers"), student_layers, teacher_layers)
    except ValueError as exc:
        return [f"hidden_state_layers: {exc}"]
    return []


def _teacher_writes(get: Get) -> list[str]:
    """Settings that need a teacher that writes text, or that only such a teacher can serve."""
    distill, problems = get("approach") == "distillation", []
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
    return problems


def _documents(get: Get) -> list[str]:
    dataset = get("dataset")
    if not dataset:
        return []
    from finetuner.sources import DATA_EXTENSIONS, is_documents, local_path

    writes = get("approach") == "distillation" and get("distillation_mode", "logits") in ("responses", "hybrid")
    if is_documents(dataset) and not writes:
        what = "a directory with no data files" if local_path(dataset).is_dir() else "a document"
        return [f"dataset: {dataset} is {what} ({', '.join(DATA_EXTENSIONS)}), only documents to "
                "read; give training rows, or let a teacher write questions from the documents "
                "(approach distillation, distillation_mode responses, questions_per_chunk 3)"]
    if is_documents(dataset) and get("questions_per_chunk") == 0:  # None: not answered yet
        return [f"dataset: {dataset} is read as documents; set questions_per_chunk (e.g. 3) "
                "so the teacher writes questions from it"]
    return []


def _evaluation(get: Get) -> list[str]:
    problems = []
    if get("eval_steps") is not None and get("eval_fraction", 0.1) == 0:
        problems.append("eval_steps: needs held-out rows to evaluate on; set eval_fraction above 0")
    if get("approach") == "distillation" and get("sft_baseline") and get("distillation_mode", "logits") != "logits":
        problems.append("sft_baseline: compares plain fine-tuning with distillation from the teacher's logits; "
                        "it needs distillation_mode logits")
    if get("early_stopping_patience") is not None and get("eval_steps") is None:
        problems.append("early_stopping_patience: counts evaluations, so it needs eval_steps too")
    return problems


def _upload(get: Get) -> list[str]:
    if get("upload") and not get("hub_repo"):
        return ["hub_repo: needed when upload is on (e.g. 'username/my-model')"]
    return []


def _judge(get: Get) -> list[str]:
    if get("judge_api_base") and not get("judge_model"):
        return ["judge_model: needed when judge_api_base is set (the model the judge endpoint serves)"]
    return []


def _speculative(get: Get) -> list[str]:
    """The student drafts tokens its teacher verifies: the teacher's weights, one tokenizer."""
    if get("speculative_benchmark") != "true" or get("approach") != "distillation":
        return []
    if get("teacher_api_base"):
        return ["speculative_benchmark: true needs the teacher's weights to verify the student's drafts, and an "
                "API teacher has none here; set it to auto or false"]
    from finetuner.sources import tokenizers_differ

    if tokenizers_differ(get("teacher", ""), get("student", "")):
        return ["speculative_benchmark: true needs a student that shares the teacher's tokenizer (a draft proposes "
                "the teacher's own token ids); set it to auto or false"]
    return []


def warnings_for(cfg: Any) -> list[str]:
    """Allowed but unusual settings of a RunConfig, worth a word."""
    notes = []
    if cfg.is_distillation and not 1 <= cfg.temperature <= 5:
        notes.append(f"temperature {cfg.temperature} is outside the usual 1-5; soft targets will be "
                     f"{'nearly one-hot' if cfg.temperature < 1 else 'nearly uniform'}")
    if cfg.is_distillation and cfg.teacher_quantization:
        notes.append(f"teacher_quantization {cfg.teacher_quantization}: the teacher's probabilities change "
                     "slightly, so the student learns from a slightly worse teacher")
    return notes
