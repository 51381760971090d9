"""The model card and the upload to the Hugging Face Hub.

The upload sends exactly the final artifacts (`upload_files`) in one commit, and only reads
local files: a failed upload leaves the run's output as it was, and the hint says how to retry
the upload alone. The token is never written anywhere and never appears in an error.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from finetuner.benchmark import comparison, scores, tables
from finetuner.config import applies
from finetuner.sources import BUILTIN_DATASETS, BUILTIN_MODELS, dataset_kind, model_kind
from finetuner.ui import UserError
from finetuner.wizard import ANSWERS_FILE

CARD_FILE = "README.md"
# Hub ids and licenses of the built-ins (sources.py knows only where they are installed).
BUILTIN_MODEL_HUB = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
BUILTIN_DATASET_HUB = {"gsm8k": "openai/gsm8k"}
# Never uploaded even if they sit in the model folder: training state, not the model.
_SKIPPED_NAMES = {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", CARD_FILE}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def find_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def retry_command(out_dir: str | Path, repo_id: str | None) -> str:
    repo = repo_id or "USER/MODEL"
    return f"python finetune_cli.py --upload-only {shlex.quote(str(out_dir))} --set hub_repo={shlex.quote(repo)}"


# ---- the model card -------------------------------------------------------------------------

def model_card(cfg, report: dict | None, adapter: bool) -> str:
    """README.md: Hub metadata (front matter) and a body saying how the model was made."""
    from huggingface_hub import ModelCard

    data = _card_data(cfg, report, adapter)
    body = "\n".join([
        f"# {_repo_name(cfg)}", "",
        _summary(cfg, adapter), "",
        "## How it was made", "",
        _markdown_table(("Setting", "Value"), _settings(cfg)), "",
        *_benchmark_section(report),
        "## Usage", "",
        _usage(cfg, adapter), "",
    ])
    # ModelCard renders the metadata (model-index included) the way the Hub parses it.
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_model_card(cfg, out_dir: str | Path) -> Path:
    """Write OUT/README.md from the answers and OUT/benchmark.json (when benchmarked)."""
    out = Path(out_dir)
    path = out / CARD_FILE
    path.write_text(model_card(cfg, comparison.load(out), adapter=not _model_dir(out)), encoding="utf-8")
    return path


def _card_data(cfg, report: dict | None, adapter: bool):
    from huggingface_hub import EvalResult, ModelCardData

    base_id, license_id = _hub_model(_base_model(cfg))
    dataset_id = _hub_dataset(cfg.dataset)
    method = "distillation" if cfg.is_distillation else cfg.method
    tags = ["finetuner", method, *(["lora"] if cfg.is_distillation and cfg.uses_lora else []),
            "text-generation"]
    results = None
    if report:
        final = report["models"][-1]  # compare() puts the model this run made last
        results = [EvalResult(task_type="text-generation", task_name="Text Generation",
                              dataset_type=dataset_id or "custom",
                              dataset_name=f"{dataset_id or 'local data'} (held-out rows)",
                              dataset_split=cfg.dataset_split if dataset_kind(cfg.dataset) == "hub" else None,
                              metric_type="rouge", metric_name=scores.METRIC_NAMES[m],
                              metric_value=final["rouge"][m])
                   for m in scores.METRICS]
    return ModelCardData(
        base_model=base_id, library_name="peft" if adapter else "transformers", license=license_id,
        datasets=[dataset_id] if dataset_id else None, tags=tags, pipeline_tag="text-generation",
        # model_name only names the model-index; alone it would be stray metadata.
        model_name=_repo_name(cfg) if results else None, eval_results=results)


def _base_model(cfg) -> str:
    """The model whose weights this one starts from: the student when distilling (a student
    derived by keeping fewer layers carries the teacher's name), else the fine-tuned model."""
    return cfg.student if cfg.is_distillation else cfg.model


def _derived_student(cfg) -> bool:
    return cfg.is_distillation and cfg.student == cfg.teacher and bool(cfg.student_layers)


def _hub_model(name: str) -> tuple[str | None, str | None]:
    """(Hub id, license) of a model name; a local directory has no Hub id."""
    if name in BUILTIN_MODEL_HUB:
        return BUILTIN_MODEL_HUB[name]
    return (name, None) if model_kind(name) == "hub" else (None, None)


def _hub_dataset(name: str) -> str | None:
    if name in BUILTIN_DATASETS:
        return BUILTIN_DATASET_HUB.get(name)
    return name if dataset_kind(name) == "hub" else None


def _model_label(name: str) -> str:
    if name in BUILTIN_MODELS:
        return f"{BUILTIN_MODEL_HUB[name][0]} (built-in Q4_1 GGUF, dequantized)"
    # A local path can name the user's home; the card shows only the folder's name.
    return name if model_kind(name) == "hub" else f"a local model ({Path(name).name})"


def _dataset_label(name: str) -> str:
    if name in BUILTIN_DATASETS:
        return f"{BUILTIN_DATASET_HUB[name]} (built-in)"
    return name if dataset_kind(name) == "hub" else f"a local file ({Path(name).name})"


def _repo_name(cfg) -> str:
    return (cfg.hub_repo or "finetuner-model").split("/")[-1]


_METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "adalora": "AdaLoRA"}


def _summary(cfg, adapter: bool) -> str:
    if _derived_student(cfg):
        what = (f"A {cfg.student_layers}-layer student cut from {_model_label(cfg.teacher)} "
                f"and distilled from it")
    elif cfg.is_distillation and cfg.distillation_mode == "responses":
        what = f"{_model_label(cfg.student)} fine-tuned on answers written by {_model_label(cfg.teacher)}"
    elif cfg.is_distillation:
        what = f"{_model_label(cfg.student)} distilled from {_model_label(cfg.teacher)}"
    else:
        what = f"{_model_label(cfg.model)} fine-tuned with {_METHOD_NAMES[cfg.method]}"
    kind = "This repository holds the LoRA adapter only" if adapter else "This repository holds the full model"
    return f"{what}, on {_dataset_label(cfg.dataset)}, using finetuner. {kind}."


# What the card tells about a run, in this order; settings that do not apply are left out.
_CARD_SETTINGS = ("approach", "model", "method", "teacher", "student", "student_layers", "student_training",
                  "distillation_mode", "divergence", "jsd_beta", "on_policy_fraction", "hidden_state_weight",
                  "hidden_state_loss", "temperature", "alpha", "dataset", "max_samples", "max_length", "long_rows",
                  "epochs", "learning_rate",
                  "batch_size", "gradient_accumulation", "max_steps", "lora_r", "lora_alpha", "lora_dropout",
                  "quantization", "adalora_init_r", "adalora_target_r", "seed")


def _settings(cfg) -> list[tuple[str, str]]:
    rows = []
    for key in _CARD_SETTINGS:
        value = getattr(cfg, key)
        if not applies(key, cfg) or value is None:
            continue
        if key in ("model", "teacher", "student"):
            value = _model_label(value)
        elif key == "dataset":
            value = _dataset_label(value)
        rows.append((key, str(value)))
    rows.append(("effective batch", str(cfg.batch_size * cfg.gradient_accumulation)))
    return rows


def _benchmark_section(report: dict | None) -> list[str]:
    if not report:
        return []
    verdict = report.get("verdict")
    return ["## Benchmark", "",
            f"ROUGE F1 (with stemming) of greedy answers to {report.get('samples', '?')} held-out prompts "
            f"never seen in training, at most {report.get('max_new_tokens', '?')} new tokens each.", "",
            _markdown_table(tables.QUALITY_HEADERS, tables.table_rows(report)), "",
            *([tables.table_note(report) + ".", ""] if tables.table_note(report) else []),
            _markdown_table(tables.COST_HEADERS, tables.cost_rows(report)), "",
            "Tok/s is decoding throughput at batch 8 on the machine that trained the model.", "",
            *(["### Verdict", "", f"**{verdict['summary']}**", "",
               *(f"- {check['text']}" for check in verdict["checks"]), ""] if verdict else [])]


def _markdown_table(headers, rows) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def _usage(cfg, adapter: bool) -> str:
    repo = cfg.hub_repo or "USER/MODEL"
    if adapter:
        loader = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")\n')
        note = _adapter_note(cfg)
    else:
        loader = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                  f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n')
        note = ""
    code = (loader + f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n\n'
            'messages = [{"role": "user", "content": "What is 12 plus 30?"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)\n"
            "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n"
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))')
    return f"```python\n{code}\n```{note}"


def _adapter_note(cfg) -> str:
    """Where AutoPeftModelForCausalLM cannot find the adapter's base on the Hub by itself."""
    if _derived_student(cfg):
        return (f"\n\nThe adapter applies to the {cfg.student_layers}-layer student finetuner cut from the "
                "teacher, which is not on the Hub: rebuild that student and use "
                "`PeftModel.from_pretrained(student, repo)`, or publish the merged model instead "
                "(merge_adapter: true).")
    if _hub_model(_base_model(cfg))[0] is None:
        return ("\n\nThe base model was a local model: AutoPeftModelForCausalLM needs it at the path "
                "recorded in adapter_config.json; otherwise load it yourself and use "
                "`PeftModel.from_pretrained(base, repo)`.")
    return ""


# ---- what to upload -------------------------------------------------------------------------

def _model_dir(out: Path) -> Path | None:
    path = out / "model"
    return path if path.is_dir() else None


def upload_files(out_dir: str | Path) -> list[tuple[Path, str]]:
    """(local path, path in repo) of the final artifacts: the model (or, without one, the adapter)
    with its tokenizer and config, then the answers, the benchmark and the card. Never
    checkpoints, optimizer state or the held-out data."""
    out = Path(out_dir)
    weights = _model_dir(out) or (out / "adapter" if (out / "adapter").is_dir() else None)
    if weights is None:
        raise UserError(f"nothing to upload: {out} has neither model/ nor adapter/",
                        hint="train first, or point --upload-only at a finished run's output folder")
    files = [(path, path.relative_to(weights).as_posix())
             for path in sorted(weights.rglob("*")) if path.is_file() and _is_model_file(path.relative_to(weights))]
    # The card in OUT replaces any stub a library wrote next to the weights (PEFT writes one).
    files += [(out / name, name) for name in (ANSWERS_FILE, comparison.REPORT_FILE, CARD_FILE)
              if (out / name).is_file()]
    return files


def _is_model_file(relative: Path) -> bool:
    hidden = any(part.startswith(".") for part in relative.parts)
    checkpoint = any(part.startswith("checkpoint-") for part in relative.parts)
    return not hidden and not checkpoint and relative.name not in _SKIPPED_NAMES \
        and not relative.name.startswith("rng_state")


# ---- the upload -----------------------------------------------------------------------------

def upload(out_dir: str | Path, repo_id: str, private: bool, token: str | None,
           endpoint: str | None = None) -> str:
    """Create `repo_id` if needed and commit exactly `upload_files(out_dir)`. Returns the repo URL."""
    out = Path(out_dir)
    retry = retry_command(out, repo_id)
    if not token:
        raise UserError(f"no Hugging Face token found, so {repo_id} was not uploaded",
                        hint=f"log in with `hf auth login` (or set HF_TOKEN), then run: {retry}")
    files = upload_files(out)
    _refuse_token_in_files(files, token, retry)

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        # create_commit, not upload_folder: the files come from two folders, and upload_folder's
        # resumable mode writes a cache (.cache/huggingface) into the folder it uploads.
        api.create_commit(repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                    for path, name in files],
                          commit_message="Upload model trained with finetuner")
    except Exception as err:  # noqa: BLE001 - sorted into user errors below, others re-raised
        user_error = _explain(err, repo_id, api.endpoint, token, retry)
        if user_error is None:
            raise
        # `from None`: the cause's request objects carry the Authorization header.
        raise user_error from None
    return str(url)


def _refuse_token_in_files(files: list[tuple[Path, str]], token: str, retry: str) -> None:
    """A last guard: no uploaded text file may contain the token (weights are not scanned)."""
    needle = token.encode()
    for path, name in files:
        if not path.name.endswith(_WEIGHT_SUFFIXES) and needle in path.read_bytes():
            raise UserError(f"{name} contains your Hub token, so nothing was uploaded",
                            hint=f"remove the token from {path}, then run: {retry}")


def _explain(err: Exception, repo_id: str, endpoint: str, token: str, retry: str) -> UserError | None:
    """A one-line UserError for a failure the user can fix, or None for a bug."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return UserError(f"upload to {repo_id} skipped: HF_HUB_OFFLINE is set",
                         hint=f"unset HF_HUB_OFFLINE, then run: {retry}")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            message = f"the Hub rejected your token (401) while uploading to {repo_id}"
            hint = f"check the token (`hf auth login --force`, or HF_TOKEN), then run: {retry}"
        elif status == 403:
            message = f"your token may not write to {repo_id} (403): the namespace belongs to someone else " \
                      f"or the token is read-only"
            hint = f"use a repo under your own name or a write token, then run: {retry}"
        else:
            detail = _scrub(err.server_message or "", token).splitlines()
            message = f"the Hub answered {status} while uploading to {repo_id}" + (f": {detail[0]}" if detail else "")
            hint = f"run: {retry}"
        return UserError(message, hint=hint)
    if isinstance(err, (httpx2.TransportError, ConnectionError)):
        return UserError(f"could not reach {endpoint} to upload {repo_id} ({type(err).__name__})",
                         hint=f"check your network connection, then run: {retry}")
    return None


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def publish(cfg, out_dir: str | Path, token: str | None = None) -> str:
    """The wizard's last step: write the model card, then upload. Returns the repo URL."""
    write_model_card(cfg, out_dir)
    return upload(out_dir, cfg.hub_repo, cfg.hub_private, token or find_token())
