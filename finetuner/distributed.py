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


def decoder_outputs(model, input_ids, attention_mask, output_hidden_states: bool = False):
    """The decoder's outputs (`last_hidden_state`, what the LM head sees; `hidden_states` when asked)
    of `model`, computed by its own forward.

    `model` may be wrapped (DDP, FSDP, DeepSpeed, peft). Going through the wrapper's forward is what
    lets DDP prepare its gradient all-reduce and FSDP gather parameters; calling the inner decoder
    directly skips both, and the ranks' weights drift apart (tests/test_distributed.py). A forward
    hook on the decoder takes its output, the LM head's input in every transformers causal LM,
    whatever a config says about `hidden_states[-1]`; `logits_to_keep` with no positions keeps the
    head from computing [batch, length, vocab] logits (the loss computes them only where labels
    count, chunk by chunk). A model without `logits_to_keep` computes full logits, unused.
    """
    import inspect

    import torch

    inner = _unwrapped(model)
    captured = []
    handle = inner.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output))
    extra = {"output_hidden_states": True} if output_hidden_states else {}
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:
        extra["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=input_ids.device)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    finally:
        handle.remove()
    return captured[-1]


def _unwrapped(model):
    """The transformers model inside DDP / FSDP (`.module`) and peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model
