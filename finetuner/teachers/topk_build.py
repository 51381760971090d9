"""Filling the teacher cache: the teacher runs once over the training rows, a shard at a time.

A shard is written to a temporary name and renamed, so a killed build leaves whole shards only,
and the next build skips them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from finetuner import ui
from finetuner.teachers.topk_cache import (TAIL_SAMPLES, TopKCache, check_directory, pack_ids, shard_name,
                                           write_manifest)

if TYPE_CHECKING:
    import datasets

    from finetuner.config import RunConfig


def ensure(cfg: RunConfig, rows: datasets.Dataset, tokenizer, vocab_size: int,
           load_teacher: Callable[[], object]) -> "TopKCache":
    """The cache for these rows: checked against this run, completed if it is not (loading the
    teacher only then), and opened for reading."""
    from finetuner.teachers.topk_fingerprint import fingerprint

    directory = Path(cfg.teacher_cache).expanduser()
    current = fingerprint(cfg.teacher, teacher_precision(cfg.teacher_quantization), tokenizer, rows, cfg.max_length,
                          cfg.teacher_top_k, cfg.temperature, vocab_size, TAIL_SAMPLES)
    manifest = check_directory(directory, current) or write_manifest(directory, current, rows)
    missing = [i for i in range(manifest["shards"]) if not (directory / shard_name(i)).is_file()]
    size = manifest["counted_tokens"] * manifest["bytes_per_token"]
    if not missing:
        ui.success(f"Teacher cache complete in {directory} ({manifest['counted_tokens']:,} tokens, {ui.size(size)}): "
                   "the teacher is not loaded")
        return TopKCache(directory)
    _check_space(directory, size * len(missing) / manifest["shards"])
    done = manifest["shards"] - len(missing)
    ui.step(f"Caching the teacher's top-{cfg.teacher_top_k} for {manifest['counted_tokens']:,} tokens in "
            f"{directory} ({ui.size(size)})" + (f"; resuming: {done} of {manifest['shards']} shards done" if done else ""))
    teacher = load_teacher()
    started, report_every = time.perf_counter(), max(1, len(missing) // 10)
    for number, index in enumerate(missing, start=1):
        kept = _build_shard(teacher, rows, index, manifest["rows_per_shard"], directory, cfg, tokenizer, vocab_size)
        if index == 0:
            _record_kept_mass(directory, manifest, kept)
        if number % report_every == 0 or number == len(missing):
            ui.info(f"{done + number} of {manifest['shards']} shards written "
                    f"({number / (time.perf_counter() - started):.2f} shards/s)")
    return TopKCache(directory)


def _record_kept_mass(directory: Path, manifest: dict, kept: dict) -> None:
    """The first shard's kept teacher mass, into the manifest (the plan shows it) and on screen."""
    import json

    from finetuner.teachers.topk_quality import KEPT_MASS_WARNING

    manifest["kept_mass"] = kept
    staging = directory / "manifest.json.tmp"
    staging.write_text(json.dumps(manifest, indent=1))
    os.replace(staging, directory / "manifest.json")
    line = (f"the top {manifest['fingerprint']['top_k']} keep {kept['share']:.0%} of the tempered teacher on the "
            f"first {kept['rows']} rows (the rest from {TAIL_SAMPLES} tail samples a token)")
    (ui.warning if kept["share"] < KEPT_MASS_WARNING else ui.info)(line)


def _uniforms(rows: list[int], counts: list[int]):
    """The tail draws' random numbers, seeded by training row: a row's samples are the same whatever
    shard or batch it is built in (a resumed build equals an uninterrupted one)."""
    import torch

    return torch.cat([torch.rand(count, TAIL_SAMPLES, generator=torch.Generator().manual_seed(row))
                      for row, count in zip(rows, counts)] or [torch.zeros(0, TAIL_SAMPLES)])


def teacher_precision(quantization: str | None) -> str:
    """What the teacher runs in while it fills the cache: its quantisation, else its dtype here."""
    if quantization:
        return quantization
    from finetuner import models

    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(models.precision_policy().teacher_dtype), "fp32")


def _check_space(directory: Path, needed: float) -> None:
    from finetuner.disk import free_bytes

    free = free_bytes(directory)
    if needed > free:
        raise ui.UserError(f"not enough disk space for the teacher cache in {directory}: about {ui.size(needed)} "
                           f"needed, {ui.size(free)} free",
                           hint="free some space, choose a teacher_cache on a larger disk, or lower teacher_top_k")


def _build_shard(teacher, rows: datasets.Dataset, index: int, rows_per_shard: int, directory: Path,
                 cfg: RunConfig, tokenizer, vocab_size: int) -> dict:
    """Writes one shard; returns its kept teacher mass (`topk_quality.kept_mass`) and row count."""
    import torch
    from safetensors.torch import save_file

    from finetuner.data.preparing import make_collator
    from finetuner.losses import select_targets
    from finetuner.objectives.topk import TopKEntries, teacher_topk
    from finetuner.teachers.topk_quality import kept_mass

    first = index * rows_per_shard
    shard = rows.select(range(first, min(first + rows_per_shard, len(rows))))
    collate = make_collator(tokenizer)
    from finetuner import logits

    head, decoder = logits.head_of(teacher), teacher.get_decoder()
    device = head.head.weight.device
    # Rows sorted by length waste less padding; results go back to training order below.
    columns = {name: shard[name] for name in ("input_ids", "attention_mask", "labels")}
    order = sorted(range(len(shard)), key=lambda i: len(columns["input_ids"][i]))
    per_row: dict[int, tuple] = {}
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            members = order[start:start + cfg.batch_size]
            batch = collate([{name: column[i] for name, column in columns.items()} for i in members])
            hidden = decoder(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            mask, _ = select_targets(batch["labels"].to(device))
            counted = hidden[:, :-1][mask]
            uniforms = _uniforms([first + i for i in members], mask.sum(1).tolist()).to(device)
            parts = [teacher_topk(head(counted[s:s + 1024])[:, :vocab_size], cfg.teacher_top_k, cfg.temperature,
                                  uniforms[s:s + 1024]) for s in range(0, max(len(counted), 1), 1024)]
            columns_out = [torch.cat(column) for column in zip(*parts)]
            for member, piece in zip(members, mask.sum(1).tolist()):
                per_row[member] = [column[:piece] for column in columns_out]
                columns_out = [column[piece:] for column in columns_out]
    ordered = TopKEntries(*(torch.cat([per_row[i][j] for i in range(len(shard))]).cpu() for j in range(5)))
    counts = torch.tensor([len(per_row[i][0]) for i in range(len(shard))])
    tensors = {"logprobs": ordered.logprobs.to(torch.float16), "ids": pack_ids(ordered.ids, vocab_size),
               "samples": pack_ids(ordered.samples, vocab_size), "tail": ordered.tail.float(),
               "tail_negentropy": ordered.tail_negentropy.float(),
               "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])}
    staging = directory / (shard_name(index) + ".tmp")
    save_file(tensors, str(staging), metadata={"first_row": str(first), "rows": str(len(shard))})
    os.replace(staging, directory / shard_name(index))  # atomic: a kill leaves no half shard
    return {"share": round(kept_mass(ordered, cfg.temperature), 4), "rows": len(shard)}
