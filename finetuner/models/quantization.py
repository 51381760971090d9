"""Quantised weights (bitsandbytes 8/4-bit): whether they can run here, their config, and one fix.

`keep_bnb_trainable`: bitsandbytes 0.50 switches a 4-bit layer to a packed, autograd-free CPU path
after its first eval-mode forward (generate, evaluate); training then silently stalls.
"""

from __future__ import annotations


def quantization_config(kind: str, compute_dtype):
    """transformers' BitsAndBytesConfig for "8bit" or "4bit" (NF4, double-quantised, computing in
    `compute_dtype`: on CPU bf16 or fp32, never fp16, which is ruinous there)."""
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"unknown quantization {kind!r}")


def quantization_available(kind: str) -> str | None:
    """Why `kind` ("4bit"/"8bit") quantisation can't run here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return f"{kind} quantisation needs the bitsandbytes package (pip install bitsandbytes)"
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes.cextension import lib
    except Exception as exc:  # a broken native install raises all sorts of things
        return f"bitsandbytes is installed but fails to load: {exc}"
    # When the native library is missing, bnb substitutes a placeholder that fails on first use.
    if type(lib).__name__.startswith("ErrorHandler"):
        return "bitsandbytes is installed but its native library did not load on this machine"
    return None


def keep_bnb_trainable(model) -> None:
    """Keep 4-bit layers on the autograd path after eval-mode forwards (bitsandbytes 0.50 on CPU).

    Call before any inference on a 4-bit model that will be trained (load_model and
    apply_adapter do). Idempotent. A layer that was already repacked is unpacked again, but only
    approximately: packing rounded its block scales to bf16, so its weights shift by ~0.1%.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        # On CPUs with AVX512-BF16, an eval-mode forward repacks the weight for a kernel that has
        # no backward; the flag stops that.
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)


