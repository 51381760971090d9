"""The benchmark's answers: greedy, to raw user prompts, rendered and encoded exactly as in training,
with how fast they were decoded."""

from __future__ import annotations

import time

from finetuner import generation
from finetuner.formatting import encode_prompt
from finetuner.formatting import render_messages_prompt, render_prompt


def answer_prompts(model, tokenizer, prompts: list[str | list[dict]], max_new_tokens: int,
                   batch_size: int = 8, min_new_tokens: int = 0, on_batch=None) -> tuple[list[str], dict]:
    """Greedy answers to raw user prompts, decoded from the new tokens only.

    Returns the answers and {"generated_tokens", "decoded_tokens", "seconds", "tokens_per_s"}.
    generated_tokens are the answers' own (up to the first stop token); tokens_per_s is decoding
    throughput, decoded_tokens / seconds, where a batch decodes every row until its longest answer
    stops. Counting only answer tokens would make a model that stops early in some rows of a batch
    look slower, though each step costs it the same. on_batch(rows), when given, is called after each batch.
    """
    model.eval()
    stops, pad = generation.stop_ids(model, tokenizer), generation.pad_id(tokenizer)
    answers: list[str] = []
    generated = decoded = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        # A chat row's prompt is its whole history, rendered exactly as in training.
        texts = [render_messages_prompt(tokenizer, p) if isinstance(p, list) else render_prompt(tokenizer, p)
                 for p in prompts[i:i + batch_size]]
        # The same ids training put before each response.
        new_tokens = generation.generate(model, encode_prompt(tokenizer, texts), max_new_tokens, pad,
                                         min_new_tokens=min_new_tokens)
        generated += sum(_answer_length(row, stops) for row in new_tokens.tolist())
        decoded += new_tokens.numel()
        answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        if on_batch is not None:
            on_batch(len(texts))
    seconds = time.perf_counter() - start
    return answers, {"generated_tokens": generated, "decoded_tokens": decoded, "seconds": round(seconds, 3),
                     "tokens_per_s": round(decoded / seconds, 2) if seconds > 0 else 0.0}


def _answer_length(tokens: list[int], stops: set[int]) -> int:
    """Tokens the model actually produced: up to and including its first stop token."""
    position = generation.stop_position(tokens, stops)
    return len(tokens) if position is None else position + 1

