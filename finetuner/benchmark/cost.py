"""What a model costs to run: decoding speed, peak memory while answering, and size on disk."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from finetuner.benchmark.answers import answer_prompts

SPEED_TOKENS = 64  # new tokens per row when timing decoding (at most max_new_tokens)
SPEED_BATCH = 8  # rows decoded at once when timing (the table's "Tok/s": one batch of 8)


def decoding_speed(model, tokenizer, prompts: list, new_tokens: int, batch_size: int) -> float:
    """Tokens/s decoding one batch of the held-out prompts for exactly `new_tokens` tokens a row
    (EOS suppressed until then), so every model does the same work whatever its answers' lengths.
    Timed on its own answers, a model whose answers all stop early pays the prompts' prefill over
    fewer tokens and looks slower: a student that learned to finish its answers measured 1.48x its
    teacher's speed, where its looping twin of the same architecture had measured 1.77x."""
    _, stats = answer_prompts(model, tokenizer, prompts[:batch_size], new_tokens, batch_size=batch_size,
                              min_new_tokens=new_tokens)
    return stats["tokens_per_s"]


class PeakMemory:
    """Peak extra memory while generating, in bytes: CUDA's max_memory_allocated above its level
    at the start, or on CPU the process's peak RSS above its RSS at the start.

    On Linux the kernel's RSS high-water mark is reset first (/proc/self/clear_refs), so an
    earlier, bigger model does not hide this one's peak. Elsewhere ru_maxrss cannot be reset
    and the growth is a lower bound (0 if the process had peaked higher before).
    """

    def __init__(self, device) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.linux_hwm = _reset_rss_peak()
            self.start = _rss_bytes() if self.linux_hwm else _max_rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _proc_status_kb("VmHWM") * 1024 if self.linux_hwm else _max_rss_bytes()
        self.growth = max(0, peak - self.start)


def _proc_status_kb(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (proc(5))
        return _proc_status_kb("VmHWM") > 0
    except OSError:
        return False


def _rss_bytes() -> int:
    return _proc_status_kb("VmRSS") * 1024


def _max_rss_bytes() -> int:
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def weight_bytes(model) -> int:
    """What the weights take in memory: parameters and buffers."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def size_mb(directory: str | Path) -> float:
    """Every file under `directory`, in MiB."""
    files = [p for p in Path(directory).rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)

