"""The teacher cache's fingerprint: everything the cached numbers depend on, so a cache built for
another run (another teacher, its precision, the rows, the tokenizer, k, T) is never read as this one's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from finetuner import sources

if TYPE_CHECKING:
    import datasets


def fingerprint(teacher: str, teacher_precision: str, tokenizer, rows: datasets.Dataset, max_length: int,
                top_k: int, temperature: float, vocab_size: int, tail_samples: int) -> dict:
    """Everything the cached numbers depend on. `teacher_weights` is None when the teacher is not
    on this machine (then the teacher's name stands in for it). `teacher_precision`: the dtype or
    quantisation it runs in ("bf16", "fp32", "8bit", "4bit"), which moves its probabilities."""
    return {"teacher": teacher, "teacher_weights": teacher_weights_id(teacher), "teacher_precision": teacher_precision,
            "tokenizer": tokenizer_hash(tokenizer), "rows": rows_hash(rows), "max_length": max_length,
            "top_k": top_k, "tail_samples": tail_samples, "temperature": temperature, "vocab_size": vocab_size}


def teacher_weights_id(name: str) -> str | None:
    """A stable id of the teacher's weights: the built-in's file, a Hub revision, or a hash of a
    local directory's weight files (sizes and 16 sampled 64 KB blocks each, so it is quick for a
    7B model and the same on any machine holding the same files)."""
    if sources.check_model(name) is not None:
        return None
    kind = sources.model_kind(name)
    if kind == "builtin":
        gguf = sources.builtin_model_file(name)
        return f"builtin:{gguf.name}:{gguf.stat().st_size}"
    if kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        return f"revision:{Path(found).parent.name}" if isinstance(found, str) else None
    digest = hashlib.sha256()
    files = sorted(p for p in Path(name).expanduser().iterdir()
                   if p.suffix in (".safetensors", ".bin", ".gguf", ".pt") and p.is_file())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            for i in range(16):
                handle.seek(size * i // 16)
                digest.update(handle.read(1 << 16))
    return f"sampled-sha256:{digest.hexdigest()[:32]}" if files else None


def tokenizer_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token]
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:32]


def rows_hash(rows: datasets.Dataset) -> str:
    """Of the tokenized training rows in order: data, tokenizer, chat template, max_length, seed."""
    import numpy as np

    digest = hashlib.sha256()
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        digest.update(np.asarray(ids, dtype=np.int32).tobytes())
        digest.update(np.asarray(labels, dtype=np.int32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:32]


def differences(stored: dict, current: dict) -> list[str]:
    """How a stored fingerprint differs from this run's, in words."""
    both_weights = stored.get("teacher_weights") and current.get("teacher_weights")
    # A local teacher's path may differ between machines; its weights are what count.
    keys = [k for k in current if k not in ("teacher", "teacher_weights")]
    keys.insert(0, "teacher_weights" if both_weights else "teacher")
    names = {"teacher_weights": "the teacher's weights", "rows": "the tokenized training rows (data, "
             "max_samples, seed, eval_fraction or chat template)", "tokenizer": "the tokenizer"}
    found = []
    for key in keys:
        if stored.get(key) != current.get(key):
            if key in ("rows", "tokenizer", "teacher_weights"):
                found.append(f"{names[key]} differ")
            else:
                found.append(f"{key}: cache {stored.get(key)!r}, this run {current.get(key)!r}")
    return found


