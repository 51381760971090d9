"""The top-k teacher cache: the teacher runs once, and students train from its files.

A cache directory holds `manifest.json` (format, fingerprint, row count, shard size) and
`shard-NNNNN.safetensors` files, each covering `ROWS_PER_SHARD` consecutive training rows:
- `logprobs` [N, k] float16: the teacher's top-k log-probabilities at T = 1, per counted position;
- `ids` [N, k]: their token ids (int16, offset by 32768, for vocabularies of at most 65,536; else int32);
- `samples` [N, TAIL_SAMPLES]: ids drawn from the tempered teacher's tail (the other ids), same id type;
- `tail` [N] float32: log sum of p^(1/T) over the other ids (see finetuner.objectives.topk);
- `tail_negentropy` [N] float32: sum over the other ids of P log P (tempered), for the KL's value;
- `offsets` [rows + 1] int64: where each row's positions start (rows in training order).
A shard is written to a temporary name and renamed, so a killed build leaves whole shards only, and
the next build skips them. Training rows carry their index (`row_index`), so the sampler may shuffle
or group by length freely. The fingerprint (teacher weights, tokenizer, a hash of the tokenized rows,
max_length, k, samples, temperature, vocabulary) must match, or the cache is refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetuner import sources, ui

if TYPE_CHECKING:
    import datasets
    from torch import Tensor

    from finetuner.config import RunConfig
    from finetuner.objectives.topk import TopKEntries

FORMAT = 3
OLD_FORMATS = {1: "format 1, from an older finetuner that kept no tail samples",  # refused: rebuild
               2: "format 2, from an older finetuner whose tail draws were independent, not systematic"}
MANIFEST = "manifest.json"
# Rows per shard: a killed build loses at most one shard's work. The variable lets a test make many.
ROWS_PER_SHARD = int(os.environ.get("FINETUNER_CACHE_SHARD_ROWS", "64"))
ROW_INDEX = "row_index"  # the dataset column that maps a training row to its cache entries
LOGPROB_BYTES, TAIL_BYTES = 2, 8  # float16; the tail's weight and negentropy, float32
# Ids drawn from the tempered tail per counted token: the tail's shape, unbiased. With the default
# top 8 that is 392 bytes a token; at T = 2 on the built-in pair, 176 systematic draws beside the top 8
# gave a closer gradient than 128 beside the top 32 at the same size (README, "Teacher cache").
TAIL_SAMPLES = 176
SMALL_VOCAB = 1 << 16  # ids fit int16 (offset by 32768) up to here


def id_bytes(vocab_size: int | None) -> int:
    return 2 if vocab_size is None or vocab_size <= SMALL_VOCAB else 4


def bytes_per_token(k: int, vocab_size: int | None = None, tail_samples: int = TAIL_SAMPLES) -> int:
    """On disk per counted token (vocab_size None: a vocabulary of at most 65,536 ids)."""
    return k * (LOGPROB_BYTES + id_bytes(vocab_size)) + tail_samples * id_bytes(vocab_size) + TAIL_BYTES


def pack_ids(ids: Tensor, vocab_size: int) -> Tensor:
    import torch

    return (ids - 32768).to(torch.int16) if vocab_size <= SMALL_VOCAB else ids.to(torch.int32)


def unpack_ids(ids: Tensor) -> Tensor:
    import torch

    return ids.long() + 32768 if ids.dtype == torch.int16 else ids.long()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


# ---- the plan, before anything loads --------------------------------------------------------

def plan_rows(cfg: RunConfig, data=None) -> list[tuple[str, str]]:
    """What the plan shows about the cache: its state, or its expected size on disk (exact when the
    prepared data is given, else an upper bound from max_samples x max_length)."""
    if not (cfg.is_distillation and cfg.teacher_cache):
        return []
    manifest = complete_manifest(Path(cfg.teacher_cache))
    if manifest:
        size = manifest["counted_tokens"] * manifest["bytes_per_token"]
        return [("teacher cache", f"complete: {manifest['counted_tokens']:,} tokens, {ui.size(size)}; "
                                  "the teacher is not loaded (if it matches this run)"), *kept_mass_rows(manifest)]
    per_token = bytes_per_token(cfg.teacher_top_k, _vocab_size(cfg.teacher))
    started = read_manifest(Path(cfg.teacher_cache))
    if started:
        done = sum((Path(cfg.teacher_cache).expanduser() / shard_name(i)).is_file() for i in range(started["shards"]))
        size = started["counted_tokens"] * started["bytes_per_token"]
        return [("teacher cache", f"{done} of {started['shards']} shards written ({ui.size(size)} in all); "
                                  "the build resumes there (if it matches this run)"), *kept_mass_rows(started)]
    # In hybrid mode the teacher has not written the responses yet: only the bound is known.
    if data is not None and getattr(data, "train", None) is not None and not getattr(cfg, "teacher_writes", False):
        tokens = counted_tokens(data.train)
        return [("teacher cache", f"top-{cfg.teacher_top_k}, {per_token} bytes a counted token x {tokens:,} "
                                  f"tokens = {ui.size(tokens * per_token)} (with {TAIL_SAMPLES} tail samples a "
                                  f"token), written once to {cfg.teacher_cache}")]
    most = math.ceil(cfg.max_samples * (1 - cfg.eval_fraction)) * cfg.max_length
    return [("teacher cache", f"top-{cfg.teacher_top_k}, {per_token} bytes a counted token x at most {most:,} "
                              f"tokens = at most {ui.size(most * per_token)} (with {TAIL_SAMPLES} tail samples a "
                              "token; exact figure after tokenizing)")]


def _vocab_size(name: str) -> int | None:
    """The teacher's vocabulary from its config (ids take 4 bytes above 65,536), None if unreadable."""
    try:
        from finetuner import models

        return getattr(models.load_config(name), "vocab_size", None)
    except Exception:  # the plan's own checks report an unreadable teacher
        return None


def kept_mass_rows(manifest: dict) -> list[tuple[str, str]]:
    from finetuner.teachers.topk_quality import kept_mass_row

    row = kept_mass_row(manifest)
    return [row] if row else []


# ---- the directory ----------------------------------------------------------------------------

def read_manifest(directory: Path) -> dict | None:
    path = directory.expanduser() / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") in OLD_FORMATS:
            raise ValueError(OLD_FORMATS[manifest["format"]])
        if manifest.get("format") != FORMAT or "fingerprint" not in manifest:
            raise ValueError("unknown format")
    except (OSError, ValueError) as exc:
        raise ui.UserError(f"{path} is damaged or not a finetuner teacher cache ({exc})",
                           hint=f"delete {directory} to rebuild the cache, or choose another teacher_cache") from None
    return manifest


def _complete(directory: Path, manifest: dict) -> bool:
    return all((directory.expanduser() / shard_name(i)).is_file() for i in range(manifest["shards"]))


def complete_manifest(directory: Path) -> dict | None:
    """The manifest of a finished cache in `directory` (not yet checked against a run), else None."""
    manifest = read_manifest(directory)
    return manifest if manifest and _complete(directory, manifest) else None


def is_complete(cfg: RunConfig) -> bool:
    return bool(cfg.is_distillation and getattr(cfg, "distillation_mode", "logits") != "responses"
                and cfg.teacher_cache and complete_manifest(Path(cfg.teacher_cache)))


def stands_in_for_teacher(cfg: RunConfig) -> bool:
    """A complete cache and no teacher on this machine: the cache replaces the teacher entirely
    (its tokenizer and config are not read; the fingerprint checks the student's tokenizer)."""
    return is_complete(cfg) and sources.check_model(cfg.teacher) is not None


def stored_vocab_size(cfg: RunConfig) -> int:
    return read_manifest(Path(cfg.teacher_cache))["fingerprint"]["vocab_size"]


def check_directory(directory: Path, current: dict) -> dict | None:
    """The matching manifest, None for a new cache; refuses (or, with consent, clears) a mismatch."""
    manifest = read_manifest(directory)
    if manifest is None:
        if directory.exists() and any(directory.iterdir()):
            raise ui.UserError(f"teacher_cache {directory} holds other files, not a teacher cache",
                               hint="choose an empty or new directory for teacher_cache")
        return None
    stored = manifest["fingerprint"]
    if current["teacher_weights"] is None:
        ui.info(f"the teacher {current['teacher']} is not on this machine: the cache is trusted to hold its "
                "outputs (its tokenizer, rows and settings are checked)")
    from finetuner.teachers.topk_fingerprint import differences

    problems = differences(stored, current)
    if not problems:
        return manifest
    message = f"the teacher cache in {directory} was built for another run: {'; '.join(problems)}"
    if ui.can_ask():
        ui.warning(message)
        if ui.confirm(f"Delete the cache files in {directory} and rebuild them?", default=False):
            remove(directory)
            return None
    raise ui.UserError(message, hint="choose another teacher_cache directory, or delete this one to rebuild it")


def write_manifest(directory: Path, current: dict, rows: datasets.Dataset) -> dict:
    manifest = {"format": FORMAT, "fingerprint": current, "rows": len(rows), "rows_per_shard": ROWS_PER_SHARD,
                "shards": math.ceil(len(rows) / ROWS_PER_SHARD), "counted_tokens": counted_tokens(rows),
                "bytes_per_token": bytes_per_token(current["top_k"], current["vocab_size"]),
                "layout": {"logprobs": "float16 [N, k]", "ids": "int16 (+32768) or int32 [N, k]",
                           "samples": f"as ids [N, {current['tail_samples']}]", "tail": "float32 [N]",
                           "tail_negentropy": "float32 [N]", "offsets": "int64 [rows + 1]"}}
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / (MANIFEST + ".tmp")
    staging.write_text(json.dumps(manifest, indent=1))
    os.replace(staging, directory / MANIFEST)
    return manifest


def counted_tokens(rows: datasets.Dataset) -> int:
    """Positions the loss counts: labels after the first that are not -100."""
    return sum(sum(1 for label in labels[1:] if label != -100) for labels in rows["labels"])


def with_row_index(rows: datasets.Dataset) -> datasets.Dataset:
    return rows.add_column(ROW_INDEX, list(range(len(rows))))


# ---- reading ----------------------------------------------------------------------------------

@dataclass
class _Shard:
    handle: object
    offsets: list[int]


class TopKCache:
    """Random access to a complete cache; each process reads only the rows its batches hold."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.rows_per_shard = self.manifest["rows_per_shard"]
        self.temperature = self.manifest["fingerprint"]["temperature"]
        self._shards: dict[int, _Shard] = {}
        for index in range(self.manifest["shards"]):  # open every header now: damage shows before training
            self._shard(index)

    def _shard(self, index: int) -> _Shard:
        if index not in self._shards:
            from safetensors import safe_open

            path = self.directory / shard_name(index)
            try:
                handle = safe_open(str(path), framework="pt")
                offsets = handle.get_tensor("offsets").tolist()
                expected = min(self.rows_per_shard, self.manifest["rows"] - index * self.rows_per_shard)
                if len(offsets) != expected + 1 or handle.get_slice("ids").get_shape()[0] != offsets[-1]:
                    raise ValueError("its row offsets do not match its entries")
            except Exception as exc:  # safetensors raises its own error types for damaged files
                raise ui.UserError(f"teacher cache file {path} is damaged ({str(exc).splitlines()[0]})",
                                   hint=f"delete {path.name} and run with --cache-teacher to rebuild it") from None
            self._shards[index] = _Shard(handle, offsets)
        return self._shards[index]

    def entries(self, row_indices: list[int], counts: list[int]) -> TopKEntries:
        """The cached entries for these rows, concatenated in batch order (as `select_targets` reads)."""
        import torch

        from finetuner.objectives.topk import TopKEntries

        parts = []
        for row, count in zip(row_indices, counts):
            shard = self._shard(row // self.rows_per_shard)
            local = row % self.rows_per_shard
            start, stop = shard.offsets[local], shard.offsets[local + 1]
            if stop - start != count:
                raise ui.UserError(f"the teacher cache has {stop - start} positions for training row {row}, "
                                   f"the batch has {count}: the cache does not match these rows",
                                   hint=f"delete {self.directory} to rebuild it")
            # float16 widened at once: CPU autocast refuses to concatenate float16 tensors.
            read = {name: shard.handle.get_slice(name)[start:stop] for name in TopKEntries._fields}
            parts.append([read["logprobs"].float(), unpack_ids(read["ids"]), read["tail"],
                          unpack_ids(read["samples"]), read["tail_negentropy"]])
        if not parts:
            k = min(self.manifest["fingerprint"]["top_k"], self.manifest["fingerprint"]["vocab_size"])
            m = self.manifest["fingerprint"]["tail_samples"]
            return TopKEntries(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), torch.zeros(0),
                               torch.zeros(0, m, dtype=torch.long), torch.zeros(0))
        return TopKEntries(*(torch.cat(column) for column in zip(*parts)))

    def entries_for_batch(self, row_index: Tensor, labels: Tensor) -> TopKEntries:
        counts = (labels[:, 1:] != -100).sum(1).tolist()
        return self.entries(row_index.tolist(), counts)


def remove(directory: Path) -> None:
    """Delete a cache's own files (never anything else in the directory)."""
    for path in [directory / MANIFEST, *directory.glob("shard-*.safetensors*")]:
        path.unlink()
    if directory.is_dir() and not any(directory.iterdir()):
        shutil.rmtree(directory)
