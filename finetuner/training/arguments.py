"""The Trainer's arguments and callbacks for a run: one place that turns answers into TrainingArguments."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainingArguments

from finetuner import artifacts, models, tracking
from finetuner.config import RunConfig


def training_arguments(cfg: RunConfig, out: Path) -> TrainingArguments:
    precision = models.precision_policy()
    return TrainingArguments(
        output_dir=str(out / artifacts.CHECKPOINTS_DIR),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",  # the schedule itself is training.schedule's (WarmupTrainer)
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.eval_steps or cfg.save_steps,  # load_best_model_at_end: save at each evaluation
        save_total_limit=2,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.device == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        **evaluation_arguments(cfg.eval_steps, cfg.batch_size),
        report_to=tracking.report_to(cfg.report_to, out),
        project=tracking.PROJECT,
        run_name=out.name,
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # works with DDP, LoRA and frozen inputs
        ddp_find_unused_parameters=False,  # every trainable weight is used: skip the graph walk
    )


def evaluation_arguments(eval_steps: int | None, batch_size: int) -> dict:
    """Held-out loss every eval_steps, and the best checkpoint (lowest eval_loss) kept at the end."""
    if eval_steps is None:
        return {"eval_strategy": "no"}
    return {"eval_strategy": "steps", "eval_steps": eval_steps, "per_device_eval_batch_size": batch_size,
            "load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False,
            "prediction_loss_only": True}


def callbacks(adapter: str | None, early_stopping_patience: int | None) -> list:
    from transformers import EarlyStoppingCallback

    found = []
    if adapter == "adalora":  # the Trainer never calls AdaLoRA's rank update itself
        from finetuner.adapters import AdaLoraAllocator

        found.append(AdaLoraAllocator())
    if early_stopping_patience:
        found.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    return found
