"""One of several processes: `torchrun` or `accelerate launch` over the same answers file.

The launcher sets RANK and WORLD_SIZE; the transformers Trainer (through accelerate) builds the
process group, wraps the student (DDP, FSDP, DeepSpeed), shards the batches and saves
checkpoints from the main process. What is left to finetuner is deciding what the other ranks
must not do (print, ask, write the output directory, benchmark, upload), read from the
environment so that it costs no import, and stopping every rank at the same step.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Started by torchrun or accelerate launch (they set LOCAL_RANK), even with one process."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    """The process that prints, asks, and writes the output directory (global rank 0)."""
    return rank() == 0


def quiet_other_ranks() -> None:
    """N copies of every line help no one: only the main process speaks; errors show from any rank."""
    if not is_main_process():
        from finetuner import ui

        ui.console.quiet = True


def main_process_first(work):
    """`work()` on the main process, then on the others (accelerate's main_process_first): what the
    main process caches, the others read instead of computing again. One process: just `work()`."""
    if world_size() == 1:
        return work()
    import torch
    from accelerate import PartialState

    # The Trainer's TrainingArguments later joins this same (singleton) state.
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        return work()


def any_rank(flag: bool, device) -> bool:
    """Whether `flag` is true on any process (a collective: every rank must call it at the same point)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def finish() -> None:
    """Every rank waits for the others, then leaves the process group.

    A rank that exits with the gloo group still alive can abort in its C++ teardown
    ("terminate called without an active exception", SIGABRT) and torchrun then fails the whole
    run, although training finished. After this the main process benchmarks and uploads alone.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
