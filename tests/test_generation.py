"""The one batched generate: left padding, stop tokens, and a model's shipped settings kept out on request."""

from __future__ import annotations

import pytest

from finetuner import generation


@pytest.fixture(scope="module")
def model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def test_stop_ids_join_the_models_eos_list_and_the_tokenizers(model, tokenizer):
    model.generation_config.eos_token_id = [5, 9]
    try:
        assert generation.stop_ids(model, tokenizer) == {5, 9, tokenizer.eos_token_id}
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    assert generation.stop_ids(model, tokenizer) == {tokenizer.eos_token_id}
    assert generation.stop_position([3, 5, 9, 1], {9, 5}) == 1 and generation.stop_position([3, 4], {9}) is None


def test_a_padded_row_continues_as_it_would_alone(model, tokenizer):
    short, long = tokenizer("What is 3 plus 4?")["input_ids"], tokenizer("The quick brown fox jumps over")["input_ids"]
    pad = generation.pad_id(tokenizer)
    alone = generation.generate(model, [short], 6, pad)
    batched = generation.generate(model, [long, short], 6, pad)
    assert batched.shape == (2, 6) and batched[1].tolist() == alone[0].tolist()


def test_shipped_settings_are_kept_out_only_when_asked_and_restored(model, tokenizer):
    prompt = [tokenizer("What is 3 plus 4?")["input_ids"]]
    pad = generation.pad_id(tokenizer)
    plain = generation.generate(model, prompt, 6, pad)[0].tolist()
    saved = model.generation_config.no_repeat_ngram_size
    model.generation_config.no_repeat_ngram_size = 1  # no token may appear twice in prompt + answer
    try:
        banned = generation.generate(model, prompt, 6, pad)[0].tolist()
        own = generation.generate(model, prompt, 6, pad, shipped_settings=False)[0].tolist()
        assert model.generation_config.no_repeat_ngram_size == 1
    finally:
        model.generation_config.no_repeat_ngram_size = saved
    assert own == plain and banned != plain
    assert not set(banned) & set(prompt[0]) and len(set(banned)) == len(banned)
