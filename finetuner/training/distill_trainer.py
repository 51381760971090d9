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
from transformers import Trainer


class DistillationTrainer(Trainer):
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
            num_items_in_batch = rescaled_count(num_items_in_batch, inputs["labels"], samples.inputs["labels"],
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
        if self._eval_rows and "eval_loss" in logs:  # eval_ce / eval_kl go on the loss curve too
            for name, value in self._eval_parts.items():
                if not math.isnan(value):  # NaN: not measured (the divergence, with a teacher cache)
                    logs[f"eval_{name}"] = round(value / self._eval_rows, 4)
            self._eval_parts = {"ce": 0.0, "kl": 0.0}
            self._eval_rows = 0
        super().log(logs, start_time)

    def _log_training_parts(self, logs: dict) -> None:
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


def rescaled_count(num_items_in_batch, old_labels, new_labels, accumulation: int):
    """The denominator for a micro-batch whose labels were replaced: it keeps the micro-batch's share
    of the accumulated step (its old count over the step's count) while averaging over its new tokens."""
    if num_items_in_batch is None:
        return None
    old, new = int((old_labels[:, 1:] != -100).sum()), int((new_labels[:, 1:] != -100).sum())
    return num_items_in_batch * new / old if old else max(new, 1) * accumulation
