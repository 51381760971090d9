"""The training stage: one function from a recipe to a trained model in the output directory.

    resume point -> the student's tokenizer (and the vocabulary it shares with the teacher)
    -> disk check -> data -> the teacher's signal (none, live, or a cache, built first if needed)
    -> the student (loaded, quantised or derived; then adapted) -> a Trainer -> the loop

Fine-tuning, distillation from written responses, from logits, from a cache, and the SFT baseline
are the same stage; the recipe says which parts apply. The transformers Trainer runs the loop;
`DistillationTrainer` only adds the loss when there is a teacher signal.
"""

from __future__ import annotations

from pathlib import Path

from finetuner.config import RunConfig
from finetuner.recipe import Recipe


def train(cfg: RunConfig, recipe: Recipe, prepared=None, written=None, kept_layers: list[int] | None = None,
          resume: bool = False):
    """Train the recipe's model on the run's data; returns a `loop.TrainResult`."""
    from finetuner.training import loop

    return loop.run(*build(cfg, recipe, prepared, written, kept_layers, resume))


def build(cfg: RunConfig, recipe: Recipe, prepared=None, written=None, kept_layers: list[int] | None = None,
          resume: bool = False):
    """Everything up to the loop: (the Trainer, the tokenizer, the checkpoint to resume, how to save).

    `prepared`: the data the plan's checks already prepared; `written`: the teacher's responses
    (`teachers.generate.WrittenResponses`) when it wrote them; `kept_layers`: a derived student's
    layers when another run already chose them (the SFT baseline)."""
    from transformers import set_seed

    from finetuner import disk, logits
    from finetuner.data.preparing import make_collator
    from finetuner.objectives import hidden_states
    from finetuner.training import arguments, loop, student
    from finetuner.teachers.signal import open_signal, shared_tokenizer

    out = Path(cfg.output_dir)
    set_seed(cfg.seed)  # before the adapter exists: LoRA's A matrices start random
    checkpoint = loop.checkpoint_to_resume(out, resume, recipe.writes)
    if recipe.writes and written is None:  # called from Python, not the recipe
        from finetuner.teachers.generate import write_for

        written = write_for(cfg, "finetuner.training.train(cfg, recipe, resume=True)")
    check_quantization(recipe)
    tokenizer, vocab_size = shared_tokenizer(cfg, recipe)
    disk.check_space(recipe, cfg.output_dir)
    data = prepare_data(cfg, tokenizer, prepared, written)
    collate = make_collator(tokenizer)
    signal = open_signal(cfg, recipe, data.train, tokenizer, vocab_size, written) \
        if recipe.signal == "cache" else None
    # Built first: under a launcher, args.device joins the process group and makes this process's
    # GPU (cuda:LOCAL_RANK) the current one, so no rank loads its teacher onto cuda:0.
    args = arguments.training_arguments(cfg, out)
    model, kept_layers = student.build(recipe, data.train, collate, out, kept_layers)
    if recipe.signal != "none":
        logits.check(model, "student")  # its head's logits must be the model's own
    if recipe.signal == "live":
        signal = open_signal(cfg, recipe, data.train, tokenizer, vocab_size, written, device=args.device,
                             student=model)
    model = student.adapt(model, recipe, cfg, recipe.steps(len(data.train)))
    trainer = _trainer(cfg, recipe, model, signal, args, data, collate, tokenizer, kept_layers, checkpoint)
    saving = loop.Saving(out, adapter=recipe.adapter is not None, merges=recipe.merges,
                         quantized_base=recipe.trained if recipe.quantization else None,
                         report_to=cfg.report_to, answers=cfg.to_answers(),
                         training_only=(hidden_states.TRAINING_ONLY,), chat_format=data.format.kind == "chat")
    return trainer, tokenizer, checkpoint, saving


def _trainer(cfg: RunConfig, recipe: Recipe, model, signal, args, data, collate, tokenizer, kept_layers,
             checkpoint: str | None):
    from finetuner.training.arguments import callbacks
    from finetuner.training.schedule import WarmupTrainer

    common = dict(model=model, args=args, eval_dataset=data.eval if cfg.eval_steps is not None else None,
                  data_collator=collate, processing_class=tokenizer,
                  callbacks=callbacks(recipe.adapter, cfg.early_stopping_patience))
    if signal is None:
        return WarmupTrainer(train_dataset=data.train, **common)
    from finetuner.objectives import hidden_states, trainer_settings
    from finetuner.training.distill_trainer import DistillationTrainer

    settings = trainer_settings(cfg, model, getattr(signal, "model", None), tokenizer, kept_layers)
    if settings.get("hidden") is not None and settings["hidden"].projections is not None:
        hidden_states.attach(model, settings["hidden"])  # trained, synchronised and clipped as the student is
        hidden_states.restore(settings["hidden"], checkpoint)
        common["callbacks"].append(hidden_states.checkpoint_callback(settings["hidden"]))
    return DistillationTrainer(train_dataset=signal.rows(data.train), teacher=signal, alpha=cfg.alpha,
                               **settings, **common)


def check_quantization(recipe: Recipe) -> None:
    from finetuner import ui
    from finetuner.models.quantization import quantization_available

    if recipe.quantization and (why := quantization_available(recipe.quantization)):
        other = "student_training lora" if recipe.distils else "method lora"
        raise ui.UserError(f"QLoRA {recipe.quantization} can't run here: {why}", hint=f"use {other}")


def prepare_data(cfg: RunConfig, tokenizer, prepared=None, written=None, write_heldout: bool = True):
    """The run's rows (those the plan prepared, unless the teacher has rewritten them since), with
    the held-out rows written for the benchmark."""
    from finetuner import artifacts, distributed, ui
    from finetuner.data.preparing import prepare

    if prepared is not None and written is None:
        data = prepared
    else:
        ui.step(f"Preparing dataset {cfg.dataset}")
        data = prepare(cfg, tokenizer, dataset=written.dataset if written else None,
                       rewrite=written.rewrite if written else None)
    if write_heldout and distributed.is_main_process():
        artifacts.write_heldout(Path(cfg.output_dir), data.heldout)
    return data


def build_teacher_cache(cfg: RunConfig, recipe: Recipe, prepared=None, written=None) -> Path:
    """--cache-teacher: fill `teacher_cache` for this run's rows and stop."""
    from finetuner import ui
    from finetuner.teachers.signal import open_signal, shared_tokenizer

    if recipe.signal != "cache":
        raise ui.UserError("--cache-teacher needs approach distillation with a local teacher's logits "
                           "(distillation_mode logits or hybrid) and a teacher_cache directory",
                           hint="add e.g. teacher_cache: teacher-cache to the answers file")
    tokenizer, vocab_size = shared_tokenizer(cfg, recipe)
    # Nothing written to output_dir: the training run that follows starts clean.
    data = prepare_data(cfg, tokenizer, prepared, written, write_heldout=False)
    open_signal(cfg, recipe, data.train, tokenizer, vocab_size, written)
    return Path(cfg.teacher_cache)
