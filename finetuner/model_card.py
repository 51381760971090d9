"""The model card (README.md): Hub metadata and a body saying how the model was made, from the
answers and, when the run was benchmarked, benchmark.json. Written beside the adapter after
training and into the output directory before an upload."""

from __future__ import annotations

from pathlib import Path

from finetuner import artifacts
from finetuner.benchmark import comparison, scores, tables
from finetuner.config import applies
from finetuner.sources import BUILTIN_DATASETS, BUILTIN_MODELS, dataset_kind, model_kind
from finetuner.teachers.spend import card_lines as generation_card_lines

CARD_FILE = "README.md"
# Hub ids and licenses of the built-ins (sources.py knows only where they are installed).
BUILTIN_MODEL_HUB = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
BUILTIN_DATASET_HUB = {"gsm8k": "openai/gsm8k"}


def model_card(cfg, report: dict | None, adapter: bool) -> str:
    """README.md: Hub metadata (front matter) and a body saying how the model was made."""
    from huggingface_hub import ModelCard

    data = _card_data(cfg, report, adapter)
    body = "\n".join([
        f"# {_repo_name(cfg.hub_repo)}", "",
        _summary(cfg, adapter), "",
        "## How it was made", "",
        _markdown_table(("Setting", "Value"), _settings(cfg)), "",
        *_benchmark_section(report),
        *generation_card_lines(cfg.output_dir),
        "## Usage", "",
        _usage(cfg.hub_repo or "USER/MODEL", adapter, _adapter_note(cfg) if adapter else ""), "",
    ])
    # ModelCard renders the metadata (model-index included) the way the Hub parses it.
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_model_card(cfg, out_dir: str | Path) -> Path:
    """Write OUT/README.md from the answers and OUT/benchmark.json (when benchmarked)."""
    out = Path(out_dir)
    path = out / CARD_FILE
    adapter = not (out / artifacts.MODEL_DIR).is_dir()  # without a merged model, the adapter is uploaded
    path.write_text(model_card(cfg, comparison.load(out), adapter=adapter), encoding="utf-8")
    return path


def write_adapter_card(cfg, out_dir: str | Path) -> None:
    """Replace PEFT's blank README template next to the adapter with finetuner's card."""
    adapter_dir = Path(out_dir) / artifacts.ADAPTER_DIR
    if adapter_dir.is_dir():
        artifacts.write_text_atomic(adapter_dir / CARD_FILE, model_card(cfg, None, adapter=True))


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
        model_name=_repo_name(cfg.hub_repo) if results else None, eval_results=results)


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


def _repo_name(hub_repo: str | None) -> str:
    return (hub_repo or "finetuner-model").split("/")[-1]


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
            *([_markdown_table(tables.TASK_HEADERS, tables.task_rows(report)), "", tables.task_note(report) + ".", ""]
              if tables.task_rows(report) else []),
            _markdown_table(tables.COST_HEADERS, tables.cost_rows(report)), "",
            "Tok/s is decoding throughput at batch 8 on the machine that trained the model.", "",
            *(["### Verdict", "", f"**{verdict['summary']}**", "",
               *(f"- {check['text']}" for check in verdict["checks"]), ""] if verdict else [])]


def _markdown_table(headers, rows) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def _usage(repo: str, adapter: bool, note: str) -> str:
    """The Python that loads `repo` and answers one question; `note` follows it."""
    if adapter:
        loader = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")\n')
    else:
        loader = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                  f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n')
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
