"""How much of the teacher's tempered distribution the cache keeps exactly: the top-k ids' share,
measured on the first shard's rows while the cache is built, written to the manifest, shown in
the plan, and warned about below `KEPT_MASS_WARNING`.

The rest (the tail) is represented by `TAIL_SAMPLES` ids drawn from it: unbiased, but the
smaller the kept share, the noisier each token's target (finetuner.objectives.topk)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetuner.config import RunConfig
    from finetuner.objectives.topk import TopKEntries

# A judgement, below the default's share: the built-in pair at T 2 and k 32 keeps 40%, and its
# distillation gradient at the student's hidden states then has cosine 0.992 to the full-logit one
# (benchmarks/teacher_cache.py; README, "The teacher cache").
KEPT_MASS_WARNING = 0.25


def kept_mass(entries: TopKEntries, temperature: float) -> float:
    """Mean share of the tempered teacher distribution on the top-k ids."""
    from finetuner.objectives.topk import teacher_buckets

    if not len(entries.ids):
        return 1.0
    return float(1 - teacher_buckets(entries, temperature)[:, -1].exp().mean())


def kept_mass_row(manifest: dict) -> tuple[str, str] | None:
    measured = manifest.get("kept_mass")
    if measured is None:
        return None
    fingerprint = manifest["fingerprint"]
    return ("teacher mass kept", f"{measured['share']:.0%} of the tempered teacher (T {fingerprint['temperature']:g}) "
                                 f"in the top {fingerprint['top_k']}, on the first {measured['rows']} rows; the rest "
                                 f"from {fingerprint['tail_samples']} tail samples a token")


def kept_mass_warning(cfg: RunConfig) -> str | None:
    """The plan's warning when the cache keeps little of the teacher exactly (None otherwise)."""
    import json

    if not (cfg.is_distillation and cfg.teacher_cache):
        return None
    try:  # the cache's own checks (topk_cache.read_manifest) report a damaged manifest
        manifest = json.loads((Path(cfg.teacher_cache).expanduser() / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    measured = manifest.get("kept_mass")
    if measured is None or measured["share"] >= KEPT_MASS_WARNING:
        return None
    return (f"the teacher cache keeps only {measured['share']:.0%} of the tempered teacher exactly (top "
            f"{manifest['fingerprint']['top_k']} at T {manifest['fingerprint']['temperature']:g}); the rest is "
            "sampled, so each token's target is noisy: a lower temperature or a larger teacher_top_k keeps more")
