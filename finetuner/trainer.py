"""LLMFineTuner: turns a RunConfig into a trained model in the output directory.

The transformers Trainer runs the loop; DistillationTrainer overrides only compute_loss
(and log, to report CE and KL separately). Cheap checks (tokenizers, data) come before
any weights are loaded.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from finetuner import adapters, artifacts, disk, distributed, models, tracking, ui
from finetuner.config import RunConfig, applies
from finetuner.data.preparing import PreparedData, make_collator, prepare
from finetuner.formatting import save_prompt_format
from finetuner.interrupt import GracefulInterrupt
from finetuner.objectives import trainer_settings as objective_settings
from finetuner.losses import KDLoss, chunk_rows, kd_loss_from_hidden, select_targets
from finetuner.objectives.topk import TeacherEntries, topk_kd_loss_from_hidden
from finetuner.teachers import topk_cache
from finetuner.progress import ProgressReporter
from finetuner.rank_trace import RankTrace


@dataclass
class TrainResult:
    model_dir: Path | None
    interrupted: bool
    train_loss: float | None
    seconds: float
    steps: int


class DistillationTrainer(Trainer):
    """loss = alpha * CE + (1 - alpha) * T^2 * D(teacher, student) on response tokens
    (+ hidden_weight * the hidden-state term). On on-policy batches the tokens are the student's own
    samples and the loss is T^2 * D alone: CE there would teach the student its own text."""

    def __init__(self, *args, teacher, temperature: float, alpha: float, vocab_size: int | None,
                 divergence: str = "forward_kl", beta: float = 0.5, hidden=None, hidden_weight: float = 0.0,
                 on_policy=None, teacher_cache=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.teacher_cache = teacher_cache  # a TopKCache: the teacher's top-k read from disk, no teacher model
        self.temperature = temperature
        self.alpha = alpha
        self.vocab_size = vocab_size
        self.divergence, self.beta = divergence, beta
        self.hidden = hidden if hidden_weight > 0 else None  # objectives.hidden_states.HiddenStateLoss
        self.hidden_weight = hidden_weight
        self.on_policy = on_policy  # objectives.on_policy.OnPolicySampler
        self.chunk_size = chunk_rows(vocab_rows(teacher or self.model))
        # Our loss divides by num_items_in_batch itself, so ask the Trainer to count it and not
        # divide again by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self._parts = dict.fromkeys(self._part_names(), 0.0)
        self._micro_batches = 0
        self._eval_parts = {"ce": 0.0, "kl": 0.0}
        self._eval_rows = 0
        self._samples: list = []  # on-policy Samples since the last log

    def _part_names(self) -> tuple[str, ...]:
        return ("ce", "kl") + (("hidden",) if self.hidden is not None else ())

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.hidden is not None and self.hidden.projections is not None \
                and not any(p is q for g in optimizer.param_groups for p in g["params"]
                            for q in self.hidden.parameters()):
            # The projection trains with the student but is not part of it (never saved with it).
            optimizer.add_param_group({"params": list(self.hidden.parameters()), "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        alpha = self.alpha
        if model.training and self.on_policy is not None and self.on_policy.wants_batch():
            with self.accelerator.autocast():
                samples = self.on_policy.sample(self.accelerator.unwrap_model(model), inputs)
            num_items_in_batch = _rescaled_count(num_items_in_batch, inputs["labels"], samples.inputs["labels"],
                                                 self.args.gradient_accumulation_steps)
            inputs, alpha = samples.inputs, 0.0
            self._samples.append(samples)
        # accelerate applies mixed precision by wrapping model.forward, but the LM heads and the
        # teacher run outside it: enter the same autocast here (measured: 7.5 -> 4.3 s/step on 2 cores).
        with self.accelerator.autocast():
            result, hidden = self._kd(model, inputs, num_items_in_batch, alpha)
        loss = result.loss if hidden is None else result.loss + self.hidden_weight * hidden
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch was summed over processes; DDP averages gradients (as Trainer does).
            loss = loss * self.accelerator.num_processes
        if model.training:
            # Normalised by the whole accumulated batch, micro-batch parts sum to the step's mean.
            self._parts["ce"] += float(result.ce)
            self._parts["kl"] += float(result.kl)
            if hidden is not None:
                self._parts["hidden"] = self._parts.get("hidden", 0.0) + float(hidden.detach())
            self._micro_batches += 1
        else:
            # Evaluation: each batch is its own mean; weigh by rows, as the Trainer does eval_loss.
            rows = len(inputs["input_ids"])
            self._eval_parts["ce"] += float(result.ce) * rows
            self._eval_parts["kl"] += float(result.kl) * rows
            self._eval_rows += rows
        # An empty outputs dict: evaluation (prediction_loss_only) needs the loss alone.
        return (loss, {}) if return_outputs else loss

    def _kd(self, model, inputs, num_items_in_batch, alpha):
        student = _unwrap(self.accelerator.unwrap_model(model))
        states = self.hidden is not None  # per-layer outputs only when matched: they cost memory
        # Hidden states only: each LM head then runs on counted positions alone, so neither model
        # ever produces [batch, length, vocab] logits. The student runs through `model`, the
        # DDP/FSDP wrapper, which synchronises its gradients; the teacher is frozen and unwrapped.
        student_out = distributed.decoder_outputs(model, inputs["input_ids"], inputs["attention_mask"],
                                                  output_hidden_states=states)
        if self.teacher_cache is not None and topk_cache.ROW_INDEX not in inputs:
            return held_out_ce(student_out.last_hidden_state, student.get_output_embeddings(), inputs["labels"],
                               self.vocab_size, self.chunk_size), None
        if self.teacher_cache is not None:  # the teacher's top-k read from disk; forward KL only (config.py)
            entries = self.teacher_cache.entries_for_batch(inputs[topk_cache.ROW_INDEX], inputs["labels"])
            return topk_kd_loss_from_hidden(student_out.last_hidden_state, student.get_output_embeddings(),
                                            inputs["labels"], TeacherEntries(*(t.to(student_out.last_hidden_state.device)
                                                                               for t in entries)),
                                            vocab_size=self.vocab_size, temperature=self.temperature, alpha=alpha,
                                            num_items_in_batch=num_items_in_batch, chunk_size=self.chunk_size), None
        teacher_out, result = live_teacher_loss(student, student_out, self.teacher, inputs, states,
                                                temperature=self.temperature, alpha=alpha,
                                                num_items_in_batch=num_items_in_batch, vocab_size=self.vocab_size,
                                                chunk_size=self.chunk_size, divergence=self.divergence,
                                                beta=self.beta)
        if not states:
            return result, None
        mask, _ = select_targets(inputs["labels"])
        mask = torch.nn.functional.pad(mask, (0, 1))  # [B, L]: the positions whose next label counts
        total = self.hidden(student_out.hidden_states[1:], teacher_out.hidden_states[1:], mask)
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        return result, total / torch.as_tensor(count, dtype=torch.float32, device=total.device).clamp_min(1)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._micro_batches and "loss" in logs:
            steps = max(1, round(self._micro_batches / self.args.gradient_accumulation_steps))
            parts = self._parts
            if self.accelerator.num_processes > 1:  # each rank holds its share of the global mean
                summed = self.accelerator.reduce(torch.tensor(list(parts.values()), device=self.args.device), "sum")
                parts = dict(zip(parts, summed.tolist()))
            for name in parts:
                logs[name] = round(parts[name] / steps, 4)
            if self.on_policy is not None:
                logs["on_policy"] = round(len(self._samples) / self._micro_batches, 3)
                if self._samples:  # length-collapse watch: how long the student's samples are
                    logs["gen_len"] = round(sum(s.mean_length for s in self._samples) / len(self._samples), 1)
                    logs["gen_capped"] = round(sum(s.capped for s in self._samples) / len(self._samples), 3)
                    logs["gen_s"] = round(sum(s.seconds for s in self._samples) / steps, 2)  # per step
            self._parts = dict.fromkeys(self._part_names(), 0.0)
            self._micro_batches = 0
            self._samples = []
        if self._eval_rows and "eval_loss" in logs:  # eval_ce / eval_kl go on the loss curve too
            for name, value in self._eval_parts.items():
                if not math.isnan(value):  # NaN: not measured (the divergence, with a teacher cache)
                    logs[f"eval_{name}"] = round(value / self._eval_rows, 4)
            self._eval_parts = {"ce": 0.0, "kl": 0.0}
            self._eval_rows = 0
        super().log(logs, start_time)


def held_out_ce(student_hidden, student_head, labels, vocab_size: int, chunk_size: int) -> KDLoss:
    """Evaluation with a teacher cache: the cache holds the training rows' teacher entries only, and
    no teacher is loaded, so held-out rows score the student's CE alone (eval_loss is eval_ce; the
    divergence is NaN, left out of the logs). Counted positions only, chunk by chunk, as in training."""
    import torch.nn.functional as F

    mask, targets = select_targets(labels)
    rows = student_hidden[:, :-1][mask]
    ce = rows.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_size):
        logits = student_head(rows[start:start + chunk_size])[..., :vocab_size]
        ce = ce + F.cross_entropy(logits.float(), targets[start:start + chunk_size], reduction="sum")
    ce = ce / max(len(targets), 1)
    return KDLoss(ce, ce.detach(), torch.full_like(ce, float("nan")))


def live_teacher_loss(student, student_out, teacher, inputs, output_hidden_states: bool = False, **loss_settings):
    """The frozen teacher's forward on the batch, then the chunked loss against the student's
    decoder outputs (`student_out`). Returns (teacher outputs, KDLoss). The plan's probe step
    (probe.py) times this same function."""
    with torch.no_grad():
        teacher_out = teacher.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                            output_hidden_states=output_hidden_states)
    result = kd_loss_from_hidden(student_out.last_hidden_state, teacher_out.last_hidden_state,
                                 student.get_output_embeddings(), teacher.get_output_embeddings(), inputs["labels"],
                                 **loss_settings)
    return teacher_out, result


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


CALIBRATION_ROWS = 8  # training rows that pick a derived student's layers


def out_of_memory_error(when: str) -> ui.UserError:
    return ui.UserError(f"ran out of memory {when}",
                        hint="lower batch_size (raise gradient_accumulation to keep the effective batch) or "
                             "max_length; or use QLoRA 4bit, or student_training: lora when distilling")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; a failed CPU allocation is a plain RuntimeError."""
    text = str(exc)
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in text \
        or "out of memory" in text.lower()


def _rescaled_count(num_items_in_batch, old_labels, new_labels, accumulation: int):
    """The denominator for a micro-batch whose labels were replaced: it keeps the micro-batch's share
    of the accumulated step (its old count over the step's count) while averaging over its new tokens."""
    if num_items_in_batch is None:
        return None
    old, new = int((old_labels[:, 1:] != -100).sum()), int((new_labels[:, 1:] != -100).sum())
    return num_items_in_batch * new / old if old else max(new, 1) * accumulation


def vocab_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LLMFineTuner:
    """Fine-tuning (LoRA, QLoRA, AdaLoRA) and knowledge distillation from one RunConfig."""

    def __init__(self, cfg: RunConfig, teacher_data=None, prepared: PreparedData | None = None,
                 kept_layers: list[int] | None = None):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.teacher_data = teacher_data  # teachers.generate.TeacherData when the teacher wrote the responses
        self.prepared = prepared  # the data the plan's checks already prepared, if any
        self.kept_layers = kept_layers  # a derived student's layers, when they are already chosen

    # ---- public entry points ----------------------------------------------------------------

    def train(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        set_seed(cfg.seed)  # before the adapter exists: LoRA's A matrices start random
        checkpoint = self._checkpoint_to_resume(resume)
        if cfg.method == "qlora" and (why := adapters.quantization_available(cfg.quantization)):
            raise ui.UserError(f"QLoRA {cfg.quantization} can't run here: {why}", hint="use method lora")
        disk.check_space(cfg)
        tokenizer = models.load_tokenizer(cfg.model)
        data = self._prepare_data(tokenizer)

        ui.step(f"Loading {cfg.model}")
        model = models.load_model(cfg.model, quantization=cfg.quantization if cfg.method == "qlora" else None)
        model = adapters.apply_adapter(cfg, model, self._total_steps(data))
        _report_trainable(model)
        callbacks = [adapters.AdaLoraAllocator()] if cfg.method == "adalora" else []
        trainer = Trainer(model=model, args=self._training_args(), train_dataset=data.train,
                          eval_dataset=self._eval_dataset(data), data_collator=make_collator(tokenizer),
                          processing_class=tokenizer, callbacks=callbacks + self._callbacks())
        return self._run(trainer, tokenizer, checkpoint, adapter=True, base_name=cfg.model)

    def train_distillation(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        set_seed(cfg.seed)
        checkpoint = self._checkpoint_to_resume(resume)
        if cfg.teacher_writes and self.teacher_data is None:  # called from Python, not the recipe
            from finetuner.teachers.generate import write_for

            self.teacher_data = write_for(cfg, "LLMFineTuner(cfg).train_distillation(resume=True)")
        if cfg.distillation_mode == "responses":
            return self._train_on_responses(checkpoint)
        student_tokenizer, vocab_size = self._distillation_tokenizers()
        disk.check_space(cfg)
        data = self._prepare_data(student_tokenizer)
        # With teacher_cache, the teacher runs only to fill a cache that is not complete yet (under a
        # launcher, on the main process; the others then open the complete cache).
        cache = distributed.main_process_first(
            lambda: topk_cache.ensure(cfg, data.train, student_tokenizer, vocab_size, self._load_teacher)) \
            if cfg.teacher_cache else None

        # Built first: under a launcher, args.device joins the process group and makes this process's
        # GPU (cuda:LOCAL_RANK) the current one, so no rank loads its teacher onto cuda:0.
        args = self._training_args()
        student = self._load_student(data, student_tokenizer)
        if cfg.trains_plainly:  # the SFT baseline: nothing uses the teacher, so it is not loaded
            student = self._maybe_lora(student, data)
            trainer = Trainer(model=student, args=args, train_dataset=data.train, eval_dataset=self._eval_dataset(data),
                              data_collator=make_collator(student_tokenizer), processing_class=student_tokenizer,
                              callbacks=self._callbacks())
            return self._run(trainer, student_tokenizer, checkpoint, adapter=cfg.student_training == "lora",
                             base_name=None)
        teacher = None if cache else self._load_teacher(args.device)
        ui.info((f"teacher {models.count_parameters(teacher) / 1e6:.1f}M parameters, " if teacher else "")
                + f"student {models.count_parameters(student) / 1e6:.1f}M")
        student = self._maybe_lora(student, data)
        trainer = DistillationTrainer(model=student, args=args,
                                      train_dataset=topk_cache.with_row_index(data.train) if cache else data.train,
                                      eval_dataset=self._eval_dataset(data), callbacks=self._callbacks(),
                                      data_collator=make_collator(student_tokenizer),
                                      processing_class=student_tokenizer, teacher=teacher, teacher_cache=cache,
                                      temperature=cfg.temperature, alpha=cfg.alpha, vocab_size=vocab_size,
                                      **objective_settings(cfg, student, teacher, student_tokenizer, self.out))
        return self._run(trainer, student_tokenizer, checkpoint, adapter=cfg.student_training == "lora",
                         base_name=None)

    def build_teacher_cache(self) -> Path:
        """--cache-teacher: fill `teacher_cache` for this run's rows and stop."""
        cfg = self.cfg
        if not (cfg.is_distillation and cfg.teacher_cache and applies("teacher_cache", cfg)):
            raise ui.UserError("--cache-teacher needs approach distillation with a local teacher's logits "
                               "(distillation_mode logits or hybrid) and a teacher_cache directory",
                               hint="add e.g. teacher_cache: teacher-cache to the answers file")
        tokenizer, vocab_size = self._distillation_tokenizers()
        data = self._data(tokenizer)  # nothing written to output_dir: the training run that follows starts clean
        topk_cache.ensure(cfg, data.train, tokenizer, vocab_size, self._load_teacher)
        return Path(cfg.teacher_cache)

    def _distillation_tokenizers(self):
        """The student's tokenizer and the vocabulary it shares with the teacher. With a complete
        cache and no teacher on this machine, the cache's fingerprint stands in for the teacher's
        tokenizer (it is checked against the student's when the cache opens)."""
        cfg = self.cfg
        if topk_cache.stands_in_for_teacher(cfg):
            return models.load_tokenizer(cfg.student), topk_cache.stored_vocab_size(cfg)
        teacher_tokenizer = models.load_tokenizer(cfg.teacher)
        student_tokenizer = teacher_tokenizer if cfg.student == cfg.teacher else models.load_tokenizer(cfg.student)
        vocab_size = models.check_tokenizers_match(teacher_tokenizer, student_tokenizer)
        for note in models.check_student_plan(cfg.teacher, cfg.student, cfg.student_layers):  # configs only
            ui.warning(note)
        return student_tokenizer, vocab_size

    def _load_teacher(self, device=None):
        precision = models.precision_policy()
        cfg = self.cfg
        written = self.teacher_data
        if written is not None and written.model is not None:  # hybrid: the teacher that just wrote
            ui.info(f"Teacher {cfg.teacher}: the weights that wrote the responses, reused for its logits")
            teacher, written.model = written.model, None  # held by the trainer alone, freed with it
            return teacher.to(device) if device is not None else teacher
        ui.step(f"Loading teacher {cfg.teacher} "
                f"({cfg.teacher_quantization or str(precision.teacher_dtype).removeprefix('torch.')})")
        teacher = models.load_teacher(cfg.teacher, precision, cfg.teacher_quantization)
        if device is not None and not cfg.teacher_quantization:
            teacher.to(device)  # this rank's device under a launcher
        return teacher

    def _train_on_responses(self, checkpoint: str | None) -> TrainResult:
        """Sequence-level distillation: plain CE on the teacher's responses; the teacher is not loaded."""
        cfg = self.cfg
        tokenizer = models.load_tokenizer(cfg.student)
        disk.check_space(cfg)
        quantized = cfg.student_training == "qlora"
        if quantized and (why := adapters.quantization_available(cfg.quantization)):
            raise ui.UserError(f"QLoRA {cfg.quantization} can't run here: {why}", hint="use student_training lora")
        data = self._prepare_data(tokenizer)
        if quantized:
            ui.step(f"Loading student {cfg.student} ({cfg.quantization})")
            student = models.load_model(cfg.student, quantization=cfg.quantization)
        else:
            student = self._load_student(data, tokenizer)
        if cfg.uses_lora:
            student = adapters.apply_adapter(cfg, student, self._total_steps(data))
        _report_trainable(student)
        trainer = Trainer(model=student, args=self._training_args(), train_dataset=data.train,
                          eval_dataset=self._eval_dataset(data), data_collator=make_collator(tokenizer),
                          processing_class=tokenizer, callbacks=self._callbacks())
        return self._run(trainer, tokenizer, checkpoint, adapter=cfg.uses_lora,
                         base_name=cfg.student if quantized else None)

    # ---- stages -----------------------------------------------------------------------------

    def _checkpoint_to_resume(self, resume: bool) -> str | None:
        if not resume:
            return None
        log = artifacts.read_training_log(self.out)
        if log and log.get("completed"):
            raise ui.UserError(f"the run in {self.out} already finished; nothing to resume",
                               hint="start a new run with another output_dir, or benchmark it with "
                                    f"--benchmark-only {self.out}")
        checkpoints = self.out / artifacts.CHECKPOINTS_DIR
        last = last_complete_checkpoint(checkpoints)
        if last is None and self.cfg.teacher_writes:
            return None  # --resume after an interrupted generation: training starts from the beginning
        if last is None:
            raise ui.UserError(f"no checkpoint to resume in {checkpoints}",
                               hint="run again without --resume to start from the beginning")
        ui.step(f"Resuming from {last}")
        return last

    def _prepare_data(self, tokenizer) -> PreparedData:
        data = self._data(tokenizer)
        if distributed.is_main_process():
            artifacts.write_heldout(self.out, data.heldout)
        return data

    def _data(self, tokenizer) -> PreparedData:
        written = self.teacher_data
        if self.prepared is not None and written is None:
            data = self.prepared
        else:
            ui.step(f"Preparing dataset {self.cfg.dataset}")
            data = prepare(self.cfg, tokenizer, dataset=written.dataset if written else None,
                           rewrite=written.rewrite if written else None)
        return data

    def _maybe_lora(self, student, data: PreparedData):
        if self.cfg.student_training == "lora":
            student = adapters.apply_adapter(self.cfg, student, self._total_steps(data))
        _report_trainable(student)
        return student

    def _eval_dataset(self, data: PreparedData):
        return data.eval if self.cfg.eval_steps is not None else None

    def _load_student(self, data: PreparedData, tokenizer):
        cfg = self.cfg
        if cfg.student_layers is None:
            ui.step(f"Loading student {cfg.student}")
            return models.load_model(cfg.student)
        ui.step(f"Deriving the student: {cfg.student_layers} layers of {cfg.student}")
        base = models.load_model(cfg.student)
        if self.kept_layers is not None:  # the same student another run started from (the SFT baseline)
            ui.info(f"keeping layers {self.kept_layers}, as the distilled student did")
            artifacts.write_json(self.out / artifacts.STUDENT_LAYERS_FILE,
                                 {"kept": self.kept_layers, "of": base.config.num_hidden_layers})
            return models.derive_student(base, cfg.student_layers, self.kept_layers)
        rows = data.train.select(range(min(CALIBRATION_ROWS, len(data.train))))
        batch = make_collator(tokenizer)(list(rows))
        kept, loss = models.choose_student_layers(base, cfg.student_layers, dict(batch))
        ui.info(f"keeping layers {kept}: of the students that drop one block of layers, the lowest loss "
                f"({loss:.3f}) on {len(rows)} training rows")
        if distributed.is_main_process():  # every rank computes the same choice from the same rows
            artifacts.write_json(self.out / artifacts.STUDENT_LAYERS_FILE,
                                 {"kept": kept, "of": base.config.num_hidden_layers, "calibration_loss": loss})
        return models.derive_student(base, cfg.student_layers, kept)

    def _total_steps(self, data: PreparedData) -> int:
        cfg = self.cfg
        if cfg.max_steps:
            return cfg.max_steps
        per_epoch = math.ceil(math.ceil(len(data.train) / cfg.batch_size) / cfg.gradient_accumulation)
        return max(1, per_epoch * cfg.epochs)

    def _training_args(self) -> TrainingArguments:
        cfg = self.cfg
        precision = models.precision_policy()
        return TrainingArguments(
            output_dir=str(self.out / artifacts.CHECKPOINTS_DIR),
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0.03,
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
            **self._evaluation_args(),
            report_to=tracking.report_to(cfg.report_to, self.out),
            project=tracking.PROJECT,
            run_name=self.out.name,
            disable_tqdm=True,
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
            train_sampling_strategy="group_by_length",
            dataloader_num_workers=0,
            gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},  # works with DDP, LoRA and frozen inputs
            ddp_find_unused_parameters=False,  # every trainable weight is used: skip the graph walk
        )

    def _evaluation_args(self) -> dict:
        """Held-out loss every eval_steps, and the best checkpoint (lowest eval_loss) kept at the end."""
        cfg = self.cfg
        if cfg.eval_steps is None:
            return {"eval_strategy": "no"}
        return {"eval_strategy": "steps", "eval_steps": cfg.eval_steps, "per_device_eval_batch_size": cfg.batch_size,
                "load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False,
                "prediction_loss_only": True}

    def _callbacks(self) -> list:
        from transformers import EarlyStoppingCallback

        patience = self.cfg.early_stopping_patience
        return [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []

    def _run(self, trainer: Trainer, tokenizer, checkpoint: str | None, adapter: bool,
             base_name: str | None) -> TrainResult:
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
                tracking.finish(self.cfg.report_to)
        seconds = time.perf_counter() - started
        history = trainer.state.log_history
        sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
        saved_dir = self.out / (artifacts.ADAPTER_DIR if adapter else artifacts.MODEL_DIR)
        if sharded and not interrupt.requested:
            # Every rank takes part in gathering sharded weights; the Trainer writes them once.
            trainer.save_model(str(saved_dir))
        if not trainer.accelerator.is_main_process:  # the main process writes the output directory
            return TrainResult(None, interrupt.requested, None, seconds, trainer.state.global_step)
        if interrupt.requested:
            self._write_log(history, completed=False, seconds=seconds)
            return TrainResult(None, True, None, seconds, trainer.state.global_step)

        if sharded:  # merging an adapter needs whole weights on one process: the saved files are the result
            tokenizer.save_pretrained(saved_dir)
            model_dir = saved_dir
        else:
            model_dir = self._save(trainer.model, tokenizer, adapter, base_name)
        self._write_log(history, completed=True, seconds=seconds)
        return TrainResult(model_dir, False, output.training_loss, seconds, trainer.state.global_step)

    def _save(self, model, tokenizer, adapter: bool, base_name: str | None) -> Path:
        save_prompt_format(tokenizer)  # a model without a chat template keeps the format it learned
        model_dir = self.out / artifacts.MODEL_DIR
        if not adapter:
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            return model_dir
        adapter_dir = self.out / artifacts.ADAPTER_DIR
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        # A LoRA student derived from the teacher has no base on disk, so it is always merged.
        if not (self.cfg.merge_adapter or self.cfg.is_distillation):
            return adapter_dir
        ui.step("Merging the adapter into a standalone model")
        merged = self._merged(model, adapter_dir, base_name)
        merged.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        return model_dir

    def _merged(self, model, adapter_dir: Path, base_name: str | None):
        quantized = self.cfg.student_training == "qlora" if self.cfg.is_distillation else self.cfg.method == "qlora"
        if quantized and base_name:
            # Merging into 4/8-bit weights would round the update away: merge into a full-precision base.
            from peft import PeftModel

            return PeftModel.from_pretrained(models.load_model(base_name), str(adapter_dir)).merge_and_unload()
        return model.merge_and_unload()

    def _write_log(self, history: list[dict], completed: bool, seconds: float) -> None:
        artifacts.write_json(self.out / artifacts.TRAINING_LOG,
                             {"completed": completed, "seconds": round(seconds, 1), "config": self.cfg.to_answers(),
                              "log_history": history})
        artifacts.plot_loss(history, self.out / artifacts.LOSS_CURVE)


def _report_trainable(model) -> None:
    trainable = models.count_parameters(model, trainable_only=True)
    total = models.count_parameters(model)
    ui.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
