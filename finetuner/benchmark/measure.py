"""One model measured: its answers scored against the references (and the teacher's), and its cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finetuner.benchmark import cost, task
from finetuner.benchmark.answers import answer_prompts
from finetuner.benchmark.scores import METRICS, has_loop, loop_rate, reference_pass, rouge, rouge_pairs, top1_agreement

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
    # Exact match of the final answers (task.score): {"strict"|"flexible": {"accuracy", "stderr", "correct",
    # "n"}}; None when the task metric is not used.
    accuracy: dict | None = None
    # The judge's grades (judge.py): {"mean", "low", "high", "scored", "unscored"}; None without a judge.
    judge: dict | None = None
    speed_repeats: list[float] | None = None  # tokens/s of each alternate timing; tokens_per_s is the best


def evaluate(label: str, model, tokenizer, heldout: list[dict], max_new_tokens: int,
             model_dir: str | Path | None = None, batch_size: int = 8, max_length: int = 512,
             teacher: FidelityReference | None = None, exact_match: bool = False, timed: bool = True,
             on_batch=None) -> tuple[ModelResult, FidelityReference]:
    """Answer every held-out prompt and score the answers; also returns this model's answers and
    top-1 predictions, so the teacher's evaluation gives what the models after it are compared with.

    exact_match: also score the final answers (task.py). timed=False leaves tokens/s and peak memory
    to the caller (the benchmark times every model alternately, speed.py). on_batch(rows) is called
    as each batch of answers is done (a progress bar)."""
    from finetuner.models import count_parameters

    prompts = [row.get("messages") or row["prompt"] for row in heldout]
    # A model's first generate call pays one-off setup (up to seconds on CPU, and memory that stays
    # allocated); keep it out of the speed and peak memory measured below, both on one batch.
    answer_prompts(model, tokenizer, prompts[:1], max_new_tokens=2)
    answers, _ = answer_prompts(model, tokenizer, prompts, max_new_tokens, batch_size=max(batch_size, ANSWER_BATCH),
                                on_batch=on_batch)
    tokens_per_s = peak_memory_mb = None
    if timed:
        with cost.PeakMemory(model.device) as memory:
            tokens_per_s = cost.decoding_speed(model, tokenizer, prompts, min(max_new_tokens, cost.SPEED_TOKENS),
                                               batch_size)
        peak_memory_mb = round((cost.weight_bytes(model) + memory.growth) / 2**20, 1)
    ppl, top1 = reference_pass(model, tokenizer, heldout, max_length, batch_size)
    result = _scored(label, answers, heldout, exact_match, parameters=count_parameters(model),
                     size_on_disk_mb=cost.size_mb(model_dir) if model_dir is not None else None,
                     tokens_per_s=tokens_per_s, peak_memory_mb=peak_memory_mb, perplexity=round(ppl, 4))
    if teacher is not None:
        result.fidelity_rougeL = round(rouge(answers, teacher.answers)["rougeL"], 4)
        if teacher.top1 is not None:
            result.top1_agreement = round(top1_agreement(top1, teacher.top1), 4)
    return result, FidelityReference(answers, top1)


def evaluate_answers(label: str, answers: list[str], heldout: list[dict],
                     exact_match: bool = False) -> tuple[ModelResult, FidelityReference]:
    """Score answers written elsewhere (an API teacher's teacher_heldout.jsonl): text metrics only."""
    result = _scored(label, answers, heldout, exact_match, parameters=None, size_on_disk_mb=None,
                     tokens_per_s=None, peak_memory_mb=None, source="answers file")
    return result, FidelityReference(answers)


def _scored(label: str, answers: list[str], heldout: list[dict], exact_match: bool, **measured) -> ModelResult:
    """A result from its answers: ROUGE (mean and per answer), loops, and exact match when asked."""
    references = [row["reference"] for row in heldout]
    pairs = rouge_pairs(answers, references)
    samples = [{"prompt": row["prompt"], "reference": row["reference"], "generation": text,
                "rougeL": round(pair["rougeL"], 4), "loops": has_loop(text)}
               for row, text, pair in zip(heldout, answers, pairs)]
    accuracy = None
    if exact_match:
        accuracy, extracted = task.score(answers, references)
        for sample, found in zip(samples, extracted):
            sample["final_answer"] = found
    means = {m: sum(p[m] for p in pairs) / len(pairs) if pairs else 0.0 for m in METRICS}  # = rouge()
    return ModelResult(label=label, rouge={m: round(means[m], 4) for m in METRICS}, samples=samples,
                       loop_rate=round(loop_rate(answers), 4), accuracy=accuracy, **measured)

