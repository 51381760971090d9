"""Running a built Trainer: resume, the loop itself, out-of-memory and Ctrl-C, saving and merging."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer

from finetuner import artifacts, models, tracking, ui
from finetuner.formatting import save_prompt_format
from finetuner.interrupt import GracefulInterrupt
from finetuner.progress import ProgressReporter
from finetuner.rank_trace import RankTrace


@dataclass
class TrainResult:
    model_dir: Path | None
    interrupted: bool
    train_loss: float | None
    seconds: float
    steps: int


@dataclass(frozen=True)
class Saving:
    """How the trained weights leave the loop."""
    out: Path
    adapter: bool  # the trained model is a peft adapter over a frozen base
    merges: bool  # ... merged into a standalone model afterwards
    quantized_base: str | None  # the base's name when it trained quantised: merge into its full-precision copy
    report_to: str
    answers: dict  # the run's answers, written into the training log
    training_only: tuple[str, ...] = ()  # submodules removed before the final save
    chat_format: bool = False  # the rows were conversations: the saved prompt format says so


def checkpoint_to_resume(out: Path, resume: bool, teacher_writes: bool) -> str | None:
    if not resume:
        return None
    log = artifacts.read_training_log(out)
    if log and log.get("completed"):
        raise ui.UserError(f"the run in {out} already finished; nothing to resume",
                           hint="start a new run with another output_dir, or benchmark it with "
                                f"--benchmark-only {out}")
    checkpoints = out / artifacts.CHECKPOINTS_DIR
    last = last_complete_checkpoint(checkpoints)
    if last is None and teacher_writes:
        return None  # --resume after an interrupted generation: training starts from the beginning
    if last is None:
        raise ui.UserError(f"no checkpoint to resume in {checkpoints}",
                           hint="run again without --resume to start from the beginning")
    ui.step(f"Resuming from {last}")
    return last


def last_complete_checkpoint(directory: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing. Its trainer_state.json is written last,
    so a process killed mid-save leaves a newer folder without one, which is skipped."""
    if not directory.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[-1]), p) for p in directory.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[-1].isdigit())
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            ui.warning(f"skipping {path.name}: it was not completely written")
            continue
        return str(path)
    return None


def out_of_memory_error(when: str) -> ui.UserError:
    return ui.UserError(f"ran out of memory {when}",
                        hint="lower batch_size (raise gradient_accumulation to keep the effective batch) or "
                             "max_length; or use QLoRA 4bit, or student_training: lora when distilling")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; a failed CPU allocation is a plain RuntimeError."""
    text = str(exc)
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in text \
        or "out of memory" in text.lower()


def run(trainer: Trainer, tokenizer, checkpoint: str | None, saving: Saving) -> TrainResult:
    trainer.remove_callback(PrinterCallback)  # raw log dicts; ProgressReporter says it better
    trainer.add_callback(ProgressReporter())
    if trace := RankTrace.from_env():
        trainer.add_callback(trace)
    started = time.perf_counter()
    with GracefulInterrupt() as interrupt:
        trainer.add_callback(interrupt)
        try:
            output = trainer.train(resume_from_checkpoint=checkpoint)
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory_error("while training") from None
        finally:
            tracking.finish(saving.report_to)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    saved_dir = saving.out / (artifacts.ADAPTER_DIR if saving.adapter else artifacts.MODEL_DIR)
    if sharded and not interrupt.requested:
        # Every rank takes part in gathering sharded weights; the Trainer writes them once.
        trainer.save_model(str(saved_dir))
    if not trainer.accelerator.is_main_process:  # the main process writes the output directory
        return TrainResult(None, interrupt.requested, None, seconds, trainer.state.global_step)
    if interrupt.requested:
        write_log(saving, history, completed=False, seconds=seconds)
        return TrainResult(None, True, None, seconds, trainer.state.global_step)

    if sharded:  # merging an adapter needs whole weights on one process: the saved files are the result
        save_prompt_format(tokenizer, saving.chat_format)
        tokenizer.save_pretrained(saved_dir)
        model_dir = saved_dir
    else:
        model_dir = save(trainer.model, tokenizer, saving)
    write_log(saving, history, completed=True, seconds=seconds)
    return TrainResult(model_dir, False, output.training_loss, seconds, trainer.state.global_step)


def save(model, tokenizer, saving: Saving) -> Path:
    from finetuner.logits import unwrapped

    save_prompt_format(tokenizer, saving.chat_format)  # a model without a chat template keeps the format it learned
    inner = unwrapped(model)
    for name in saving.training_only:
        if hasattr(inner, name):
            delattr(inner, name)
    model_dir = saving.out / artifacts.MODEL_DIR
    if not saving.adapter:
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        return model_dir
    adapter_dir = saving.out / artifacts.ADAPTER_DIR
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    if not saving.merges:
        return adapter_dir
    ui.step("Merging the adapter into a standalone model")
    merged = _merged(model, adapter_dir, saving.quantized_base)
    merged.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def _merged(model, adapter_dir: Path, quantized_base: str | None):
    if quantized_base:
        # Merging into 4/8-bit weights would round the update away: merge into a full-precision base.
        from peft import PeftModel

        return PeftModel.from_pretrained(models.load_model(quantized_base), str(adapter_dir)).merge_and_unload()
    return model.merge_and_unload()


def write_log(saving: Saving, history: list[dict], completed: bool, seconds: float) -> None:
    artifacts.write_json(saving.out / artifacts.TRAINING_LOG,
                         {"completed": completed, "seconds": round(seconds, 1), "config": saving.answers,
                          "log_history": history})
    artifacts.plot_loss(history, saving.out / artifacts.LOSS_CURVE)
