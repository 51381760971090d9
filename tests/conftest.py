"""Real small things for the tests: a tokenizer trained here, tiny models built from configs,
and dataset files on disk. Built once per session; each is a directory like a user's."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def arithmetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Question/answer pairs with a learnable pattern, in GSM8K's shape."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append({"question": f"What is {a} plus {b}?",
                     "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"})
    return rows


def train_tokenizer(directory: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [r["question"] + " " + r["answer"] for r in arithmetic_pairs(400)]
    corpus += ["The quick brown fox jumps over the lazy dog.", "user assistant system"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def build_llama(directory: Path, tokenizer, layers: int = 4, seed: int = 0, hidden: int = 64) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_gpt2(directory: Path, tokenizer, layers: int = 4, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=layers, n_head=4, n_positions=512,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def tokenizer_dir(assets):
    directory = assets / "tokenizer"
    train_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama(assets, tokenizer) -> Path:
    """A 4-layer Llama-style causal LM, saved like a user's local model directory."""
    return build_llama(assets / "tiny-llama", tokenizer, layers=4)


@pytest.fixture(scope="session")
def tiny_llama_small(assets, tokenizer) -> Path:
    """A 2-layer Llama sharing tiny_llama's tokenizer: a separate student."""
    return build_llama(assets / "tiny-llama-2l", tokenizer, layers=2, seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2(assets, tokenizer) -> Path:
    return build_gpt2(assets / "tiny-gpt2", tokenizer, layers=4)


@pytest.fixture(scope="session")
def qa_file(assets) -> Path:
    """A JSONL file of 64 question/answer pairs."""
    path = assets / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_pairs(64)))
    return path
