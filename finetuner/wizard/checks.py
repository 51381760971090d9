"""Checks made at the question, that would otherwise fail after every question was answered:
a dataset that can't be read (an offline Hub id, a model folder, a folder mixing file types) and a
distillation mode the teacher and student can't serve. Cheap: file names and JSON only, no ML library."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from finetuner.sources import (BUILTIN_DATASETS, DATA_EXTENSIONS, DOCUMENT_EXTENSIONS, dataset_kind, hub_offline,
                               local_path, tokenizers_differ)

Answers = dict[str, Any]

# Files a saved model folder holds and a dataset folder does not.
_MODEL_FILES = ("config.json", "tokenizer_config.json", "generation_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def problem_at_question(key: str, value: Any, answers: Answers) -> str | None:
    """Why `value` can't work for `key` given the answers so far, or None."""
    if key == "dataset" and isinstance(value, str):
        return dataset_problem(value)
    if key == "distillation_mode":
        return mode_problem(value, answers)
    return None


def dataset_problem(name: str) -> str | None:
    kind = dataset_kind(name)
    if kind == "local" and local_path(name).is_dir():
        return _folder_problem(local_path(name))
    if kind == "hub" and hub_offline() and not _dataset_in_cache(name):
        close = difflib.get_close_matches(name, [*BUILTIN_DATASETS, *_local_data_files()], n=1, cutoff=0.5)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        return (f"{name!r} is not a built-in or a local file, and the Hub is offline (HF_HUB_OFFLINE is set), so "
                f"it can't be downloaded (it is not in the local cache){suggestion}")
    return None


def _folder_problem(folder: Path) -> str | None:
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if "config.json" in names and (len(names & set(_MODEL_FILES)) > 1
                                   or any(n.endswith(_WEIGHT_SUFFIXES) for n in names)):
        return (f"{folder} is a model folder (config.json, weights or a tokenizer), not a dataset; give a data "
                f"file ({', '.join(DATA_EXTENSIONS)}) or a folder of them")
    types = sorted({Path(n).suffix.lower() for n in names} & set(DATA_EXTENSIONS + DOCUMENT_EXTENSIONS))
    if len(types) > 1 and not set(types) <= set(DOCUMENT_EXTENSIONS):
        return (f"{folder} mixes {', '.join(types)} files, read as one dataset they'd clash; give one file, or a "
                "folder of one type")
    return None


def _dataset_in_cache(repo_id: str) -> bool:
    """Whether an offline `datasets.load_dataset(repo_id)` can find it: the Hub cache or the datasets cache."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return hub.is_dir() or any(datasets_cache.glob(f"{repo_id.replace('/', '___')}*"))


def _local_data_files(root: Path = Path(".")) -> list[str]:
    """Data files near the current directory, for "did you mean"."""
    found = []
    for pattern in ("*", "*/*"):
        found += [str(p) for p in root.glob(pattern) if p.suffix.lower() in DATA_EXTENSIONS and p.is_file()]
    return found[:200]


def mode_problem(mode: str, answers: Answers) -> str | None:
    """logits and hybrid match the teacher's token probabilities: its weights here, and one tokenizer."""
    if mode not in ("logits", "hybrid"):
        return None
    if answers.get("teacher_api_base"):
        return (f"{mode} needs the teacher's weights, and an API teacher only writes text; use distillation_mode "
                "responses (the teacher writes the answers the student trains on)")
    if tokenizers_differ(answers.get("teacher", ""), answers.get("student", "")):
        return (f"{mode} matches token probabilities, and the teacher's and student's tokenizers differ; use "
                "distillation_mode responses (any tokenizer), or a student of the teacher's family")
    return None
