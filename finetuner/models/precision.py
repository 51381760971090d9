"""The precision policy: fp16/bf16 on a GPU; on a CPU, bf16 only where it multiplies faster."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch



@dataclass(frozen=True)
class Precision:
    device: str
    teacher_dtype: torch.dtype
    bf16: bool  # Trainer mixed precision (student keeps fp32 master weights)
    fp16: bool


# FINETUNER_CPU_DTYPE=bf16|fp32 overrides the measurement (both ranks of a run should agree).
CPU_DTYPE_ENV = "FINETUNER_CPU_DTYPE"


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies in bf16 than in fp32, timed on a layer-sized matmul.

    CPUs differ by 8x here: about 4x where the cores have bf16 units that oneDNN uses (AMD Zen 4,
    Intel AMX), about 0.5x where torch reports plain AVX512 and bf16 is converted in software.
    """
    import time

    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = {}
    for x, y in pairs.values():
        x @ y  # the first call picks a kernel
    for _ in range(7):  # alternating, so another process's load weighs on both alike; the best of each
        for dtype, (x, y) in pairs.items():
            start = time.perf_counter()
            x @ y
            best[dtype] = min(best.get(dtype, math.inf), time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def _forced_cpu_dtype() -> str | None:
    forced = os.environ.get(CPU_DTYPE_ENV, "").strip().lower()
    return forced if forced in ("bf16", "fp32") else None


def cpu_uses_bf16() -> bool:
    forced = _forced_cpu_dtype()
    return forced == "bf16" if forced else cpu_bf16_speedup() > 1.0


def cpu_precision_reason() -> str:
    """The plan's line on how this CPU computes, and why."""
    dtype = "bf16 autocast, teacher in bf16" if cpu_uses_bf16() else "fp32"
    if _forced_cpu_dtype():
        return f"{dtype} ({CPU_DTYPE_ENV} says so)"
    return f"{dtype} (bf16 multiplies {cpu_bf16_speedup():.2f}x as fast as fp32 here)"


def precision_policy() -> Precision:
    """Half precision where it is fast: bf16 or fp16 on CUDA; on CPU, bf16 if this CPU multiplies
    faster in it than in fp32, else fp32 throughout (which is also the more precise).

    Never fp16 on CPU: an fp16 matmul there runs ~350x slower than bf16.
    """
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Precision(device="cuda", teacher_dtype=torch.bfloat16, bf16=True, fp16=False)
        return Precision(device="cuda", teacher_dtype=torch.float16, bf16=False, fp16=True)
    if cpu_uses_bf16():
        return Precision(device="cpu", teacher_dtype=torch.bfloat16, bf16=True, fp16=False)
    return Precision(device="cpu", teacher_dtype=torch.float32, bf16=False, fp16=False)


# ---- loading weights --------------------------------------------------------------------------

