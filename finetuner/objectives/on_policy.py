"""On-policy distillation (GKD's lmbda): the student writes, the teacher grades every token it wrote.

A share `fraction` of training batches keeps only its prompts; the current student samples a response
for each (eval mode, no gradients, then back to train mode), and the batch becomes prompt + sample
with labels on the student-written tokens only. The trainer then takes the divergence there as
usual: the teacher scores the student's own text, which is what fixes exposure bias (the looping
answers of a student that only ever saw the teacher's or the reference's text).

Length-collapse guards: samples stop at `max_new_tokens` (and never run past `max_length`); the EOS
the student writes is a graded token (the teacher judges when to stop), and what follows it is
padding; the mean sampled length and the share that hit the cap are logged (`gen_len`, `gen_capped`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from finetuner.generation import generate, stop_position
from finetuner.losses import IGNORE_INDEX


def why_not_on_policy(data_kind: str) -> str | None:
    """Why on-policy distillation cannot run on data of this kind ("pairs" | "chat" | "text"), or
    None when it can. The student writes answers to the batch's prompts, and plain text has none."""
    if data_kind == "text":
        return ("on-policy distillation needs prompts for the student to answer, and plain text has none; "
                "set on_policy_fraction to 0, or use prompt/response or chat data")
    return None


@dataclass
class Samples:
    inputs: dict[str, Tensor]  # input_ids, attention_mask, labels: right-padded, prompt + sample
    mean_length: float  # sampled tokens per row, EOS included
    capped: float  # share of rows that hit max_new_tokens without an EOS
    seconds: float = 0.0  # time spent sampling


class OnPolicySampler:
    def __init__(self, fraction: float, temperature: float, max_new_tokens: int, max_length: int,
                 eos_token_id: int | list[int], pad_token_id: int, seed: int = 0):
        self.fraction = fraction
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.pad_token_id = pad_token_id
        self._rng = random.Random(seed)  # its own stream: the data order stays the same as off-policy

    def wants_batch(self) -> bool:
        return self.fraction > 0 and self._rng.random() < self.fraction

    def sample(self, model, inputs: dict[str, Tensor]) -> Samples:
        """Prompt + a student sample for every row of `inputs` (`model`: the unwrapped student)."""
        prompts = prompt_ids(inputs)
        budget = min(self.max_new_tokens, self.max_length - max(len(p) for p in prompts))
        if budget < 1:  # every prompt fills max_length: nothing can be written, keep the batch
            return Samples(inputs, 0.0, 0.0)
        device = inputs["input_ids"].device
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            # The model's own distribution: no repetition penalty, n-gram ban or top-k/top-p that a
            # Hub model's generation_config ships with reshapes what the teacher then grades.
            new_tokens = generate(model, [p.tolist() for p in prompts], budget, self.pad_token_id,
                                  temperature=self.temperature, top_p=1.0, top_k=0, eos_ids=self.eos_ids,
                                  shipped_settings=False, inference_only=False, device=device)
        finally:
            model.train(was_training)
        written = [self._until_eos(row) for row in new_tokens]
        capped = sum(len(w) == budget and int(w[-1]) not in self.eos_ids for w in written) / len(written)
        return Samples(self._batch(prompts, written, device), sum(map(len, written)) / len(written), capped,
                       time.perf_counter() - started)

    def _until_eos(self, sample: Tensor) -> Tensor:
        """The written tokens up to and including the first EOS."""
        stop = stop_position(sample.tolist(), self.eos_ids)
        return sample if stop is None else sample[: stop + 1]

    def _batch(self, prompts: list[Tensor], written: list[Tensor], device) -> dict[str, Tensor]:
        width = max(len(p) + len(w) for p, w in zip(prompts, written))
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long, device=device)
        attention = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, (prompt, sample) in enumerate(zip(prompts, written)):
            end = len(prompt) + len(sample)
            ids[row, :end] = torch.cat([prompt, sample])
            attention[row, :end] = 1
            labels[row, len(prompt):end] = sample
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def prompt_ids(inputs: dict[str, Tensor]) -> list[Tensor]:
    """Each row's tokens before its first counted label (the prompt), padding dropped."""
    prompts = []
    for ids, attention, labels in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"]):
        counted = (labels != IGNORE_INDEX).nonzero()
        real = ids[attention.bool()] if not len(counted) else ids[: int(counted[0])][attention[: int(counted[0])].bool()]
        prompts.append(real)
    return prompts
