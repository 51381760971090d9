"""A teacher whose weights are here: it writes responses in batches with transformers' generate.

Batched, left-padded generation (`finetuner.generation`), in the precision policy's dtype (fp16 or bf16 on CUDA; on CPU bf16 or fp32, whichever this CPU multiplies
faster, never fp16).
Prompts are sorted by length so a batch wastes little on padding.
"""

from __future__ import annotations

from typing import Callable

from finetuner import models, ui
from finetuner.config import RunConfig
from finetuner.teachers.response_cache import Reply, Request


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
    from finetuner import generation
    from finetuner.formatting import encode_prompt
    from finetuner.formatting import render_messages_prompt

    ids = encode_prompt(tokenizer, [render_messages_prompt(tokenizer, r.as_messages()) for r in batch])
    new_tokens = generation.generate(model, ids, cfg.generation_max_new_tokens, generation.pad_id(tokenizer),
                                     temperature=cfg.generation_temperature, top_p=cfg.generation_top_p)
    stops = generation.stop_ids(model, tokenizer)
    replies = []
    for row, prompt in zip(new_tokens.tolist(), ids):
        length = generation.stop_position(row, stops)
        finished = length is not None
        tokens = row[:length] if finished else row
        replies.append(Reply(tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                             "stop" if finished else "length", len(prompt), len(tokens)))
    return replies
