"""One model measured: its answers scored against the references (and the teacher's), and its cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finetuner.benchmark import cost
from finetuner.benchmark.answers import answer_prompts
from finetuner.benchmark.scores import loop_rate, reference_pass, rouge, top1_agreement

# Rows answered at once. Decoding a small model on CPU is bound by reading its weights once per
# step, so 20 rows cost little more than 8: 40 GSM8K answers of 96 tokens from the built-in teacher
# took 25.5 s instead of 42 s (2 cores). Speed and peak memory are still measured at batch_size.
ANSWER_BATCH = 20


@dataclass
class FidelityReference:
    """What a model's fidelity is measured against: the teacher's answers, and its top-1 predictions
    on the reference tokens (None when the teacher answered from a file, without weights)."""
    answers: list[str]
    top1: list[list[int]] | None = None


@dataclass
class ModelResult:
    label: str
    rouge: dict[str, float]
    parameters: int | None  # None: a teacher that answered from teacher_heldout.jsonl (no weights here)
    size_on_disk_mb: float | None  # None for a model that exists only in memory
    tokens_per_s: float | None  # decoding throughput; see `answers.answer_prompts`
    # Memory this model needs to answer: its weights (parameters + buffers) plus the peak
    # growth while decoding one batch (activations, KV cache); see cost.PeakMemory for how it is measured.
    peak_memory_mb: float | None
    samples: list[dict[str, str]] = field(default_factory=list)  # every prompt/reference/generation
    perplexity: float | None = None  # of the reference answers
    loop_rate: float = 0.0  # share of answers with a 4-gram repeated 3+ times (scores.loop_rate)
    # Fidelity to the teacher: ROUGE-L of this model's answers against the teacher's, and top-1
    # agreement with the teacher on the reference tokens. None for the teacher and without one.
    fidelity_rougeL: float | None = None
    top1_agreement: float | None = None
    source: str = "weights"  # "answers file": scored from teacher_heldout.jsonl


def evaluate(label: str, model, tokenizer, heldout: list[dict], max_new_tokens: int,
             model_dir: str | Path | None = None, batch_size: int = 8, max_length: int = 512,
             teacher: FidelityReference | None = None) -> tuple[ModelResult, FidelityReference]:
    """Answer every held-out prompt and score the answers; also returns this model's answers and
    top-1 predictions, so the teacher's evaluation gives what the models after it are compared with."""
    from finetuner.models import count_parameters

    prompts = [row.get("messages") or row["prompt"] for row in heldout]
    references = [row["reference"] for row in heldout]
    # A model's first generate call pays one-off setup (up to seconds on CPU, and memory that stays
    # allocated); keep it out of the speed and peak memory measured below, both on one batch.
    answer_prompts(model, tokenizer, prompts[:1], max_new_tokens=2)
    answers, _ = answer_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=max(batch_size, ANSWER_BATCH))
    with cost.PeakMemory(model.device) as memory:
        tokens_per_s = cost.decoding_speed(model, tokenizer, prompts, min(max_new_tokens, cost.SPEED_TOKENS),
                                           batch_size)
    ppl, top1 = reference_pass(model, tokenizer, heldout, max_length, batch_size)
    result = ModelResult(
        label=label,
        rouge={m: round(v, 4) for m, v in rouge(answers, references).items()},
        parameters=count_parameters(model),
        size_on_disk_mb=cost.size_mb(model_dir) if model_dir is not None else None,
        tokens_per_s=tokens_per_s,
        peak_memory_mb=round((cost.weight_bytes(model) + memory.growth) / 2**20, 1),
        samples=_samples(heldout, answers),
        perplexity=round(ppl, 4),
        loop_rate=round(loop_rate(answers), 4),
    )
    if teacher is not None:
        result.fidelity_rougeL = round(rouge(answers, teacher.answers)["rougeL"], 4)
        if teacher.top1 is not None:
            result.top1_agreement = round(top1_agreement(top1, teacher.top1), 4)
    return result, FidelityReference(answers, top1)


def evaluate_answers(label: str, answers: list[str], heldout: list[dict]) -> tuple[ModelResult, FidelityReference]:
    """Score answers written elsewhere (an API teacher's teacher_heldout.jsonl): text metrics only."""
    references = [row["reference"] for row in heldout]
    result = ModelResult(label=label, rouge={m: round(v, 4) for m, v in rouge(answers, references).items()},
                         parameters=None, size_on_disk_mb=None, tokens_per_s=None, peak_memory_mb=None,
                         samples=_samples(heldout, answers), loop_rate=round(loop_rate(answers), 4),
                         source="answers file")
    return result, FidelityReference(answers)


def _samples(heldout: list[dict], answers: list[str]) -> list[dict[str, str]]:
    return [{"prompt": row["prompt"], "reference": row["reference"], "generation": text}
            for row, text in zip(heldout, answers)]

