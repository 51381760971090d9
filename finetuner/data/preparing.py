"""Preparing training data: examples tokenized with response-only labels, split, and batched.

`prepare` selects usable rows in a seeded order, renders each exactly as the benchmark will
(through `formatting`), tokenizes it so that only the response counts in the loss, and holds
part of it out. Deterministic for a config, so a teacher can write responses for exactly the
prompts training will see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from finetuner import ui
from finetuner.data.formats import DataFormat, detect_format, select_examples
from finetuner.data.reading import load_rows
from finetuner.formatting import encode_prompt, render_messages_prompt, render_prompt, response_suffix
from finetuner.ui import UserError

if TYPE_CHECKING:
    import datasets

    from finetuner.config import RunConfig


@dataclass
class PreparedData:
    train: "datasets.Dataset"  # input_ids, attention_mask, labels; not padded
    eval: "datasets.Dataset"  # the held-out rows, tokenized the same way
    heldout: list[dict]  # {"prompt", "reference"} (+ "messages" for chat); [] for plain text
    format: DataFormat
    stats: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # every selected example (training, then held out)


def _tokenize(examples: list[dict], plain_text: bool, tokenizer, max_length: int) -> tuple[list[dict], dict[str, int]]:
    """Examples as {"input_ids", "labels", "example", "cut"}; rows whose prompt fills max_length are dropped."""
    if plain_text:
        prompt_ids = [[] for _ in examples]
        response_ids = encode_prompt(tokenizer, [ex["text"] + response_suffix(tokenizer) for ex in examples])
    else:
        prompt_ids, response_ids = _encode_pairs(examples, tokenizer)
    encoded, counts = [], {"truncated": 0, "dropped_too_long": 0}
    for example, prompt, response in zip(examples, prompt_ids, response_ids):
        if len(prompt) >= max_length:
            counts["dropped_too_long"] += 1
            continue
        cut = len(prompt) + len(response) > max_length
        if cut:
            counts["truncated"] += 1
            response = response[:max_length - len(prompt)]
        encoded.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response,
                        "example": example, "cut": cut})
    return encoded, counts


def _encode_pairs(examples: list[dict], tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    rendered = [render_messages_prompt(tokenizer, ex["messages"]) if "messages" in ex
                else render_prompt(tokenizer, ex["prompt"]) for ex in examples]
    # The response is tokenized apart from the prompt, so the prompt's ids are exactly what generation starts from.
    responses = tokenizer([ex["response"] + response_suffix(tokenizer) for ex in examples],
                          add_special_tokens=False)["input_ids"] if examples else []
    return encode_prompt(tokenizer, rendered) if examples else [], responses


def cut_at_max_length(examples: list[dict], tokenizer, max_length: int) -> list[bool]:
    """Whether each {"prompt", "response"} example's training row runs past max_length."""
    prompts, responses = _encode_pairs(examples, tokenizer)
    return [len(p) + len(r) > max_length for p, r in zip(prompts, responses)]


def encode_heldout(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Held-out rows ({"prompt", "reference"}, + "messages" for chat) as {"input_ids", "labels"},
    tokenized exactly as training tokenizes a row, so a perplexity scores what training optimised."""
    examples = [{**row, "response": row["reference"]} for row in rows]
    encoded, _ = _tokenize(examples, False, tokenizer, max_length)
    return [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded]


def _to_dataset(encoded: list[dict]) -> datasets.Dataset:
    import datasets

    ids = datasets.List(datasets.Value("int64"))
    features = datasets.Features({"input_ids": ids, "attention_mask": ids, "labels": ids})
    return datasets.Dataset.from_dict({"input_ids": [e["input_ids"] for e in encoded],
                                       "attention_mask": [[1] * len(e["input_ids"]) for e in encoded],
                                       "labels": [e["labels"] for e in encoded]}, features=features)


def _eval_size(rows: int, fraction: float) -> int:
    if fraction <= 0 or rows < 2:
        return 0
    return min(rows - 1, max(1, round(rows * fraction)))


def _label_tokens(encoded: list[dict]) -> int:
    return sum(sum(1 for label in e["labels"] if label != -100) for e in encoded)


def _heldout_row(example: dict) -> dict:
    row = {"prompt": example["prompt"], "reference": example["response"]}
    if "messages" in example:
        row["messages"] = example["messages"]
    return row


@dataclass
class Split:
    """Examples after selection and the held-out split, before any teacher rewrites responses."""
    train: list[dict]  # tokenized: {"input_ids", "labels", "example"}
    heldout: list[dict]
    format: DataFormat
    stats: dict[str, int]


def split(cfg: RunConfig, tokenizer, dataset: str | None = None) -> Split:
    """Load, detect, clean, sample, tokenize and split. Deterministic for a config, so a teacher can
    write responses for exactly the prompts training will see. `dataset` overrides cfg.dataset."""
    rows = load_rows(cfg, dataset)
    fmt = detect_format(rows)
    ui.info(f"Detected {fmt.description()}{' pairs' if fmt.kind == 'pairs' else ''} in {_rows(rows.num_rows)}")

    examples, dropped = select_examples(rows, fmt, cfg.seed, cfg.max_samples)
    if dropped:
        ui.warning(f"Skipped {_rows(dropped)} with empty or missing {fmt.needed()}")
    if not examples:
        raise UserError(f"every row of {dataset or cfg.dataset} was skipped: all {rows.num_rows} have empty or "
                        f"missing {fmt.needed()}", hint="check that the file holds the data you expect")
    if len(examples) < cfg.max_samples:
        ui.info(f"max_samples is {cfg.max_samples}, but only {_rows(len(examples))} can be used; using them all")

    encoded, counts = _tokenize(examples, fmt.kind == "text", tokenizer, cfg.max_length)
    if counts["dropped_too_long"]:
        ui.warning(f"Dropped {_rows(counts['dropped_too_long'])} whose prompt alone fills "
                   f"max_length ({cfg.max_length} tokens)")
    if counts["truncated"]:
        ui.warning(f"Truncated {_rows(counts['truncated'])} to max_length ({cfg.max_length} tokens)")
    if not encoded:
        raise UserError(f"every prompt is longer than max_length ({cfg.max_length} tokens)",
                        hint="raise max_length, or use shorter prompts")
    # Which rows are held out depends on prompt lengths only, never on responses.
    n_eval = _eval_size(len(encoded), cfg.eval_fraction)
    train, heldout = encoded[:len(encoded) - n_eval], encoded[len(encoded) - n_eval:]
    stats = {"rows_loaded": rows.num_rows, "dropped_empty": dropped, "rows_used": len(encoded),
             "truncated": counts["truncated"], "dropped_too_long": counts["dropped_too_long"], "dropped_long": 0}
    return Split(train, heldout, fmt, stats)


def _drop_cut(train: list[dict], max_length: int) -> tuple[list[dict], int]:
    """long_rows drop: training rows that were cut at max_length leave, so every row trained on ends as
    written (its final answer and EOS). Held-out rows stay: the benchmark asks what users will ask."""
    kept = [e for e in train if not e["cut"]]
    if not kept:
        raise UserError(f"long_rows is drop, and every training row is longer than max_length ({max_length} tokens)",
                        hint="raise max_length, or set long_rows truncate")
    if len(kept) < len(train):
        ui.info(f"Left {_rows(len(train) - len(kept))} longer than max_length out of training (long_rows drop)")
    return kept, len(train) - len(kept)


def prepare(cfg: RunConfig, tokenizer, dataset: str | None = None,
            rewrite: Callable[[dict], dict | None] | None = None) -> PreparedData:
    """The training and held-out data. `rewrite` replaces a training example's response (the
    teacher's, in sequence-level distillation) or drops it (None); held-out references stay."""
    parts = split(cfg, tokenizer, dataset)
    train, held, stats = parts.train, parts.heldout, dict(parts.stats)
    examples = [e["example"] for e in train + held]  # what a teacher that writes is asked
    if rewrite is not None:
        rewritten = [new for e in train if (new := rewrite(e["example"])) is not None]
        if len(rewritten) < len(train):
            ui.info(f"{_rows(len(train) - len(rewritten))} without a usable teacher response left out of training")
        if not rewritten:
            raise UserError("no training row has a usable teacher response",
                            hint="read the generation cache in the output directory; lower the filters "
                                 "(generation_drop_incomplete false) or raise generation_max_new_tokens")
        train, counts = _tokenize(rewritten, False, tokenizer, cfg.max_length)
        stats["truncated"] = counts["truncated"]
    if cfg.long_rows == "drop":  # the rows trained on: the teacher's when it rewrote them
        train, stats["dropped_long"] = _drop_cut(train, cfg.max_length)
    stats.update({"train_rows": len(train), "eval_rows": len(held),
                  "train_label_tokens": _label_tokens(train), "eval_label_tokens": _label_tokens(held)})
    ui.info(f"{_rows(len(train))} to train on ({stats['train_label_tokens']} tokens counted in the loss), "
            f"{len(held)} held out")
    heldout = [] if parts.format.kind == "text" else [_heldout_row(e["example"]) for e in held]
    return PreparedData(_to_dataset(train), _to_dataset(held), heldout, parts.format, stats, examples)


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


def make_collator(tokenizer):
    """Pads each batch to its longest row; padding gets attention 0 and label -100."""
    from transformers import DataCollatorForSeq2Seq

    if tokenizer.pad_token is None:
        # Padded positions are masked out of attention and loss, so which id fills them is moot.
        tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", pad_to_multiple_of=None, label_pad_token_id=-100)
