"""A teacher whose weights are here: it writes responses in batches with transformers' generate.

Batched, left-padded generation (a decoder continues from the right end of each row), in the
precision policy's dtype (fp16 or bf16 on CUDA; on CPU bf16 or fp32, whichever this CPU multiplies
faster, never fp16).
Prompts are sorted by length so a batch wastes little on padding.
"""

from __future__ import annotations

from typing import Callable

from finetuner import models, ui
from finetuner.config import RunConfig
from finetuner.teachers.cache import Reply, Request


class LocalTeacher:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.identity = {"model": cfg.teacher, "api_base": None}
        self._model = None
        self._tokenizer = None

    def load(self):
        if self._model is None:
            precision = models.precision_policy()
            ui.step(f"Loading teacher {self.cfg.teacher} to write responses "
                    f"({str(precision.teacher_dtype).removeprefix('torch.')}, batches of {self.cfg.generation_batch_size})")
            self._tokenizer = models.load_tokenizer(self.cfg.teacher)
            self._model = models.load_teacher(self.cfg.teacher, precision)
        return self._model, self._tokenizer

    @property
    def loaded_model(self):
        """The weights, if generation loaded them (a complete cache never does)."""
        return self._model

    def generate(self, requests: list[Request], on_reply: Callable[[Request, Reply], None],
                 stop: Callable[[], bool]) -> None:
        import torch

        model, tokenizer = self.load()
        torch.manual_seed(self.cfg.seed)  # sampling (temperature > 0) is reproducible too
        ordered = sorted(requests, key=lambda r: len(r.prompt) + sum(len(c) for _, c in r.messages))
        size = self.cfg.generation_batch_size
        for start in range(0, len(ordered), size):
            if stop():
                return
            batch = ordered[start:start + size]
            for request, reply in zip(batch, generate_batch(model, tokenizer, batch, self.cfg)):
                on_reply(request, reply)


def generate_batch(model, tokenizer, batch: list[Request], cfg: RunConfig) -> list[Reply]:
    """One left-padded generate call for a batch of chat requests."""
    import torch

    from finetuner.formatting import encode_prompt, render_messages_prompt

    ids = encode_prompt(tokenizer, [render_messages_prompt(tokenizer, r.as_messages()) for r in batch])
    width = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=model.device)
    attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=model.device)
    sample = cfg.generation_temperature > 0
    options = dict(do_sample=True, temperature=cfg.generation_temperature, top_p=cfg.generation_top_p) \
        if sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention, pad_token_id=pad,
                                max_new_tokens=cfg.generation_max_new_tokens, **options)
    stop_ids = _stop_ids(model, tokenizer)
    replies = []
    for row, prompt in zip(output[:, width:].tolist(), ids):
        length = next((i for i, token in enumerate(row) if token in stop_ids), None)
        finished = length is not None
        tokens = row[:length] if finished else row
        replies.append(Reply(tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                             "stop" if finished else "length", len(prompt), len(tokens)))
    return replies


def _stop_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
