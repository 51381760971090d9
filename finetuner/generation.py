"""The one batched generate: prompts as token ids in, each row's new tokens out.

Rows are padded on the left: a decoder continues from the last position, so right padding would make
a short prompt continue after pad tokens. The benchmark, the local teacher, on-policy sampling and the
chat all come through here, so they agree on padding, stop tokens and decoding options.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext


def stop_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's generation_config EOS (one id or several) and the
    tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def pad_id(tokenizer) -> int:
    """The id that fills the left of shorter prompts (masked out): pad, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def stop_position(tokens: list[int], stops: set[int] | list[int]) -> int | None:
    """Where the first stop token is in a row of new tokens, or None when the row never stopped.
    What follows it is padding, written because other rows of the batch were still going."""
    return next((i for i, token in enumerate(tokens) if token in stops), None)


def generate(model, prompts: list[list[int]], max_new_tokens: int, pad: int, *,
             temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
             min_new_tokens: int | None = None, eos_ids: list[int] | None = None,
             shipped_settings: bool = True, inference_only: bool = True, device=None, streamer=None,
             assistant_model=None):
    """One left-padded `model.generate` call; returns the new tokens, [rows, new] on `device`.

    temperature 0 decodes greedily; above 0 it samples (with top_p / top_k when given). eos_ids
    replaces the model's own stop tokens when given. shipped_settings=False keeps what the model's
    generation_config ships with (repetition_penalty, no_repeat_ngram_size, top_k, ...) out, so
    the tokens come from the model's own distribution. inference_only=False for a model that
    trains on afterwards: what inference_mode creates (buffers a model builds lazily, too) cannot
    take part in backward. streamer (transformers' TextStreamer) prints tokens as they come.
    assistant_model drafts tokens the model verifies (transformers' assisted generation; one row at a
    time): greedy, the output is the model's own.
    """
    import torch

    device = model.device if device is None else device
    width = max(len(row) for row in prompts)
    input_ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompts], device=device)
    options = _options(max_new_tokens, pad, temperature, top_p, top_k, min_new_tokens, eos_ids)
    settings = nullcontext() if shipped_settings else _only(model, options)
    with settings, (torch.inference_mode() if inference_only else torch.no_grad()):
        drafts = {} if assistant_model is None else {"assistant_model": assistant_model}
        output = model.generate(input_ids=input_ids, attention_mask=attention, streamer=streamer, **drafts, **options)
    return output[:, width:]


def _options(max_new_tokens, pad, temperature, top_p, top_k, min_new_tokens, eos_ids) -> dict:
    if temperature > 0:
        options = dict(do_sample=True, temperature=temperature)
        options.update({k: v for k, v in (("top_p", top_p), ("top_k", top_k)) if v is not None})
    else:  # None: greedy, whatever sampling settings the model ships with
        options = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    options.update(max_new_tokens=max_new_tokens, pad_token_id=pad)
    if min_new_tokens is not None:
        options["min_new_tokens"] = min_new_tokens
    if eos_ids is not None:
        options["eos_token_id"] = list(eos_ids)
    return options


@contextmanager
def _only(model, options: dict):
    """The model's generation_config holds `options` alone while it generates. A generation_config
    passed to generate is not enough: transformers fills its unset fields from the model's."""
    from transformers import GenerationConfig

    owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    saved = owner.generation_config
    owner.generation_config = GenerationConfig(**{k: v for k, v in options.items() if v is not None})
    try:
        yield
    finally:
        owner.generation_config = saved
