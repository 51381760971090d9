"""Decoding speed of every model, timed alternately: each repeat times every model once, in swapped
order on the next repeat, so a machine that gets busier or quieter mid-benchmark slows all models
alike. Each model's best repeat is its tokens/s; the repeats are kept, and a speed check whose
repeats disagree is "not measurable" (verdict.py). Peak memory is taken on the first repeat.
"""

from __future__ import annotations

from finetuner.benchmark import cost

REPEATS = 3


def time_alternately(entries: list[tuple], prompts: list, new_tokens: int, batch_size: int,
                     repeats: int = REPEATS, on_timing=None) -> dict[str, dict]:
    """entries: (label, model, tokenizer). Returns {label: {"tokens_per_s" (best), "repeats",
    "peak_memory_mb"}}. on_timing() is called after each timing."""
    timings: dict[str, list[float]] = {label: [] for label, _, _ in entries}
    memory: dict[str, float] = {}
    for r in range(repeats):
        for label, model, tokenizer in (entries if r % 2 == 0 else entries[::-1]):
            if r == 0:
                with cost.PeakMemory(model.device) as peak:
                    speed = cost.decoding_speed(model, tokenizer, prompts, new_tokens, batch_size)
                memory[label] = round((cost.weight_bytes(model) + peak.growth) / 2**20, 1)
            else:
                speed = cost.decoding_speed(model, tokenizer, prompts, new_tokens, batch_size)
            timings[label].append(speed)
            if on_timing is not None:
                on_timing()
    return {label: {"tokens_per_s": max(values), "repeats": values, "peak_memory_mb": memory[label]}
            for label, values in timings.items()}
