"""What answers score: ROUGE and loops against text (pure), and perplexity and top-1 agreement from a
teacher-forced pass over the reference answers.

A loop is the failure that ROUGE against references rewards ("she has 70 gold, she has 70 gold,
..."): the right words, repeated. `loop_rate` counts the answers that contain one.
"""

from __future__ import annotations

import math
import re
from collections import Counter

METRICS = ("rouge1", "rouge2", "rougeL")
METRIC_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
LOOP_NGRAM = 4  # a loop: some word 4-gram ...
LOOP_REPEATS = 3  # ... that occurs 3 or more times in one answer


def has_loop(text: str, n: int = LOOP_NGRAM, repeats: int = LOOP_REPEATS) -> bool:
    """Whether some word n-gram occurs `repeats` or more times in `text` (case-insensitive;
    punctuation is not part of a word, so "gold," and "gold" are the same word)."""
    words = re.findall(r"\w+", text.lower())
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return any(count >= repeats for count in counts.values())


def loop_rate(texts: list[str], n: int = LOOP_NGRAM, repeats: int = LOOP_REPEATS) -> float:
    """The share of `texts` that loop (0.0 for no texts)."""
    return sum(has_loop(t, n, repeats) for t in texts) / len(texts) if texts else 0.0


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over pairs, with Porter stemming ("cats" matches "cat")."""
    pairs = rouge_pairs(predictions, references)
    if not pairs:
        return {m: 0.0 for m in METRICS}
    return {m: sum(p[m] for p in pairs) / len(pairs) for m in METRICS}


def rouge_pairs(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measure of each (prediction, reference) pair: what a mean's interval is taken over."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return []
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    return [{m: score.fmeasure for m, score in scorer.score(reference, prediction).items()}  # (target, prediction)
            for prediction, reference in zip(predictions, references)]


def perplexity(model, tokenizer, heldout: list[dict], max_length: int, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per reference-answer token), prompts given, tokenized as
    in training. Teacher forcing only, so it is cheap and independent of decoding choices."""
    return reference_pass(model, tokenizer, heldout, max_length, batch_size)[0]


def reference_pass(model, tokenizer, heldout: list[dict], max_length: int,
                   batch_size: int = 8) -> tuple[float, list[list[int]]]:
    """One teacher-forced pass over the reference answers: their perplexity, and for each row the
    model's top-1 prediction at every reference token (what `top1_agreement` compares)."""
    import torch
    import torch.nn.functional as F

    from finetuner.data.preparing import encode_heldout, make_collator

    encoded = encode_heldout(heldout, tokenizer, max_length)
    collate = make_collator(tokenizer)
    model.eval()
    total, count, predictions = 0.0, 0, []
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            batch = collate([{**e, "attention_mask": [1] * len(e["input_ids"])} for e in encoded[i:i + batch_size]])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
            top1 = logits.argmax(-1)
            predictions += [row[mask].tolist() for row, mask in zip(top1, labels != -100)]
    return (math.exp(total / count) if count else float("nan")), predictions


def top1_agreement(predictions: list[list[int]], teacher_predictions: list[list[int]]) -> float:
    """The share of reference tokens where two models' top-1 predictions are the same token."""
    pairs = [(a, b) for row, teacher_row in zip(predictions, teacher_predictions) for a, b in zip(row, teacher_row)]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0
