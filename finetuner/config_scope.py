"""When a setting means anything: the rules behind `applies`, one per part of a run.

A setting that does not apply is neither asked, nor checked, nor written to the answers file.
"""

from __future__ import annotations

from typing import Any

BUILTIN_MODEL = "smollm2-135m-instruct"
BUILTIN_DATASET = "gsm8k"


def applies(key: str, answers: Any) -> bool:
    """Whether a setting means anything for these answers (a dict or a RunConfig)."""
    get = answers.get if isinstance(answers, dict) else lambda k, d=None: getattr(answers, k, d)
    distill = get("approach", "fine-tuning") == "distillation"
    for rule in (_teacher_applies, _objective_applies, _generation_applies, _adapter_applies):
        verdict = rule(key, get, distill)
        if verdict is not None:
            return verdict
    return _output_applies(key, get, answers)


def _teacher_applies(key: str, get, distill: bool) -> bool | None:
    """The teacher and the student it teaches; None for other keys."""
    if key == "teacher_quantization":  # a local teacher's weights only
        return distill and not get("teacher_api_base")
    if key in ("teacher", "student", "student_layers", "student_training", "temperature", "alpha"):
        return distill and not (key in ("temperature", "alpha") and get("distillation_mode") == "responses")
    if key in ("distillation_mode", "teacher_api_base", "sft_baseline"):
        return distill
    if key in ("teacher_cache", "teacher_top_k"):  # a cache holds distributions: a local teacher's logits
        cache = distill and get("distillation_mode", "logits") != "responses" and not get("teacher_api_base")
        return cache and (key == "teacher_cache" or bool(get("teacher_cache")))
    if key == "teacher_api_key_env":
        return distill and bool(get("teacher_api_base"))
    return None


def _objective_applies(key: str, get, distill: bool) -> bool | None:
    """What the student matches of the teacher's distributions; None for other keys."""
    matches_logits = distill and get("distillation_mode", "logits") != "responses"
    if key in ("divergence", "on_policy_fraction", "hidden_state_weight"):
        return matches_logits
    if key == "jsd_beta":
        return matches_logits and get("divergence", "forward_kl") == "jsd"
    if key in ("on_policy_temperature", "on_policy_max_new_tokens"):
        return matches_logits and (get("on_policy_fraction", 0.0) or 0.0) > 0
    if key in ("hidden_state_loss", "hidden_state_layers"):
        return matches_logits and (get("hidden_state_weight", 0.0) or 0.0) > 0
    return None


def _generation_applies(key: str, get, distill: bool) -> bool | None:
    """A teacher that writes the responses (and maybe the questions); None for other keys."""
    if not (key.startswith("generation_") or key in ("questions_per_chunk", "chunk_tokens")):
        return None
    writes = distill and get("distillation_mode", "logits") in ("responses", "hybrid")
    if key in ("generation_concurrency", "generation_timeout", "generation_max_retries"):
        return writes and bool(get("teacher_api_base"))
    if key == "generation_batch_size":
        return writes and not get("teacher_api_base")
    if key == "generation_on_budget":
        return writes and get("generation_token_budget") is not None
    if key == "chunk_tokens":
        return writes and (get("questions_per_chunk") or 0) > 0
    if key in ("generation_price_in", "generation_price_out"):  # a local teacher costs machine time only
        return writes and bool(get("teacher_api_base"))
    return writes


def _adapter_applies(key: str, get, distill: bool) -> bool | None:
    """The fine-tuning method and its adapter; None for other keys."""
    method = get("method", "lora")
    uses_lora = get("student_training", "full") in ("lora", "qlora") if distill else True
    if key in ("model", "method"):
        return not distill
    if key in ("lora_r", "lora_alpha", "lora_dropout"):
        return uses_lora and (distill or method in ("lora", "qlora"))
    if key == "merge_adapter":
        return uses_lora
    if key == "quantization":
        return get("student_training") == "qlora" if distill else method == "qlora"
    if key in ("adalora_init_r", "adalora_target_r"):
        return not distill and method == "adalora"
    return None


def _output_applies(key: str, get, answers: Any) -> bool:
    """Where the data comes from and what happens after training."""
    if key in ("dataset_config", "dataset_split", "dataset_files"):
        from finetuner.sources import dataset_kind

        return dataset_kind(get("dataset", BUILTIN_DATASET)) == "hub"
    if key == "benchmark":  # plain text has no prompts and answers to score
        from finetuner.sources import plain_text_dataset

        return not plain_text_dataset(get("dataset", BUILTIN_DATASET))
    if key in ("hub_repo", "hub_private"):
        return bool(get("upload", False))
    if key not in _BENCHMARK_SETTINGS:
        return True
    if not (get("benchmark", True) and applies("benchmark", answers)):
        return False
    if key in ("judge_model", "judge_api_key_env", "judge_token_budget"):
        return bool(get("judge_api_base"))
    if key == "speculative_benchmark":  # the student as a draft for its teacher (true with an API one is refused)
        return get("approach", "fine-tuning") == "distillation"
    return True


_BENCHMARK_SETTINGS = ("benchmark_samples", "max_new_tokens", "task_metric", "judge_api_base", "judge_model",
                       "judge_api_key_env", "judge_token_budget", "speculative_benchmark")
