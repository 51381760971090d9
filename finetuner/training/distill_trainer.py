"""DistillationTrainer: the transformers Trainer with the distillation loss, and its parts logged.

loss = alpha * CE + (1 - alpha) * T^2 * D(teacher, student) on response tokens
(+ hidden_weight * the hidden-state term). The teacher's distribution comes from a
`finetuner.teachers.signal` object; on on-policy batches the tokens are the student's own samples
and the loss is T^2 * D alone: CE there would teach the student its own text.
"""

from __future__ import annotations

import math

import torch

from finetuner import logits
from finetuner.losses import select_targets
from finetuner.training.schedule import WarmupTrainer


class DistillationTrainer(WarmupTrainer):
    def __init__(self, *args, teacher, alpha: float, hidden=None, hidden_weight: float = 0.0, on_policy=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher  # a teachers.signal.TeacherSignal
        self.alpha = alpha
        self.hidden = hidden if hidden_weight > 0 else None  # objectives.hidden_states.HiddenStateLoss
        self.hidden_weight = hidden_weight
        self.on_policy = on_policy  # objectives.on_policy.OnPolicySampler
        # Our loss divides by num_items_in_batch itself, so ask the Trainer to count it and not
        # divide again by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self._parts = dict.fromkeys(self._part_names(), 0.0)
        self._micro_batches = 0
        self._reference_batches = 0  # micro-batches on the dataset's own tokens (not on-policy samples)
        self._eval_parts = {"ce": 0.0, "kl": 0.0}
        self._eval_rows = 0
        self._samples: list = []  # on-policy Samples since the last log

    def _part_names(self) -> tuple[str, ...]:
        return ("ce", "kl") + (("hidden",) if self.hidden is not None else ())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        alpha, on_policy = self.alpha, False
        if model.training and self.on_policy is not None and self.on_policy.wants_batch():
            with self.accelerator.autocast():
                samples = self.on_policy.sample(self.accelerator.unwrap_model(model), inputs)
            num_items_in_batch = rescaled_count(num_items_in_batch, inputs["labels"], samples.inputs["labels"],
                                                self.args.gradient_accumulation_steps)
            inputs, alpha, on_policy = samples.inputs, 0.0, True
            self._samples.append(samples)
        # accelerate applies mixed precision by wrapping model.forward, but the LM heads and the
        # teacher run outside it: enter the same autocast here (measured: 7.5 -> 4.3 s/step on 2 cores).
        with self.accelerator.autocast():
            result, hidden = self._kd(model, inputs, num_items_in_batch, alpha)
        loss = result.loss if hidden is None else result.loss + self.hidden_weight * hidden
        # num_items_in_batch was summed over processes, so each process holds its share of the global
        # mean; DDP averages gradients, so the loss (and, for the logs, its parts) scale back up.
        shares = self.accelerator.num_processes \
            if num_items_in_batch is not None and self.args.average_tokens_across_devices else 1
        loss = loss * shares
        if model.training:
            self._add_training_parts(result, hidden, on_policy)
        else:
            # Evaluation: each batch is its own mean; weigh by rows, as the Trainer does eval_loss.
            rows = len(inputs["input_ids"])
            self._eval_parts["ce"] += float(result.ce) * shares * rows
            self._eval_parts["kl"] += float(result.kl) * shares * rows
            self._eval_rows += rows
        # An empty outputs dict: evaluation (prediction_loss_only) needs the loss alone.
        return (loss, {}) if return_outputs else loss

    def _add_training_parts(self, result, hidden, on_policy: bool) -> None:
        """Normalised by the whole accumulated batch, micro-batch parts sum to the step's mean. The
        student's CE on its own samples is not the reference CE: on-policy batches log none."""
        if not on_policy:
            self._parts["ce"] += float(result.ce)
            self._reference_batches += 1
        self._parts["kl"] += float(result.kl)
        if hidden is not None:
            self._parts["hidden"] = self._parts.get("hidden", 0.0) + float(hidden.detach())
        self._micro_batches += 1

    def _kd(self, model, inputs, num_items_in_batch, alpha):
        states = self.hidden is not None  # per-layer outputs only when matched: they cost memory
        # Hidden states only: each LM head then runs on counted positions alone, so neither model
        # ever produces [batch, length, vocab] logits. The student runs through `model`, the
        # DDP/FSDP wrapper, which synchronises its gradients; the teacher is frozen and unwrapped.
        student_out = logits.decoder_outputs(model, inputs["input_ids"], inputs["attention_mask"],
                                             output_hidden_states=states)
        result, teacher_states = self.teacher.loss(student_out, logits.head_of(model), inputs, alpha,
                                                   num_items_in_batch, hidden_states=states)
        if not states or teacher_states is None:
            return result, None
        mask, _ = select_targets(inputs["labels"])
        mask = torch.nn.functional.pad(mask, (0, 1))  # [B, L]: the positions whose next label counts
        total = self.hidden(student_out.hidden_states[1:], teacher_states[1:], mask)
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        return result, total / torch.as_tensor(count, dtype=torch.float32, device=total.device).clamp_min(1)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._micro_batches and "loss" in logs:
            self._log_training_parts(logs)
        if "eval_loss" in logs:
            self._log_eval_parts(logs)
        super().log(logs, start_time)

    def _log_training_parts(self, logs: dict) -> None:
        # Each process holds its share of each step's global mean: the sum over processes is the mean.
        # Each part is then a sum of per-step means; CE only over the steps with reference batches.
        accumulation = self.args.gradient_accumulation_steps
        parts = self._summed_over_processes(self._parts)
        steps = max(1, round(self._micro_batches / accumulation))
        reference_steps = self._reference_batches / accumulation
        for name, value in parts.items():
            if name == "ce" and not reference_steps:
                continue  # every batch was the student's own samples: no reference CE to show
            logs[name] = round(value / (max(reference_steps, 1e-9) if name == "ce" else steps), 4)
        if self.on_policy is not None:
            logs["on_policy"] = round(len(self._samples) / self._micro_batches, 3)
            if self._samples:  # length-collapse watch: how long the student's samples are
                logs["gen_len"] = round(sum(s.mean_length for s in self._samples) / len(self._samples), 1)
                logs["gen_capped"] = round(sum(s.capped for s in self._samples) / len(self._samples), 3)
                logs["gen_s"] = round(sum(s.seconds for s in self._samples) / steps, 2)  # per step
        self._parts = dict.fromkeys(self._part_names(), 0.0)
        self._micro_batches = self._reference_batches = 0
        self._samples = []

    def _log_eval_parts(self, logs: dict) -> None:
        """eval_ce / eval_kl over every process's held-out rows (the Trainer's eval_loss is too)."""
        parts = self._summed_over_processes({**self._eval_parts, "rows": self._eval_rows})
        rows = parts.pop("rows")
        for name, value in parts.items():
            if rows and not math.isnan(value):  # NaN: not measured (the divergence, with a teacher cache)
                logs[f"eval_{name}"] = round(value / rows, 4)
        self._eval_parts = {"ce": 0.0, "kl": 0.0}
        self._eval_rows = 0

    def _summed_over_processes(self, parts: dict) -> dict:
        if self.accelerator.num_processes == 1:
            return parts
        summed = self.accelerator.reduce(torch.tensor([float(v) for v in parts.values()], device=self.args.device),
                                         "sum")
        return dict(zip(parts, summed.tolist()))


def rescaled_count(num_items_in_batch, old_labels, new_labels, accumulation: int):
    """The denominator for a micro-batch whose labels were replaced: it keeps the micro-batch's share
    of the accumulated step (its old count over the step's count) while averaging over its new tokens."""
    if num_items_in_batch is None:
        return None
    old, new = int((old_labels[:, 1:] != -100).sum()), int((new_labels[:, 1:] != -100).sum())
    return num_items_in_batch * new / old if old else max(new, 1) * accumulation
