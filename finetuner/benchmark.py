"""Benchmark: answer held-out prompts with each model, score with ROUGE, compare, save.

The held-out rows (OUT/heldout.jsonl) were never trained on. Every model answers the same
prompts, as the same token ids training put before each response (`render_prompt`, then
`data.encode_prompt`), with greedy decoding, so only the model differs between rows of the table.

benchmark.json (written by `save`):
{
  "approach": "fine-tuning" | "distillation",
  "samples": int, "max_new_tokens": int, "metrics": ["rouge1", "rouge2", "rougeL"],
  "models": [{"label", "rouge": {metric: F1},
              "perplexity",                    # of the reference answers (teacher forcing)
              "loop_rate",                     # share of answers repeating a word 4-gram 3+ times
              "fidelity_rougeL", "top1_agreement",  # vs the teacher (distillation); null for the teacher
              "parameters", "size_on_disk_mb", "tokens_per_s", "peak_memory_mb",  # null when unknown
                                               # tokens_per_s: one batch, SPEED_TOKENS new tokens a row
              "source": "weights" | "answers file",  # the teacher answered from teacher_heldout.jsonl
              "samples": [{"prompt", "reference", "generation"}, ...]},  # every prompt benchmarked
             ...],                             # in run order; the last is the model this run made
  "baseline": label | null,                    # base model / student before distillation
  "final": label,                              # the model this run produced
  "teacher": label | null,                     # distillation only
  "sft_baseline": label | null,                # the same student fine-tuned plainly (sft_baseline)
  "deltas": {metric: final - baseline} | null,
  "retained": {metric: final / teacher} | null, # distillation only; null per metric if teacher scored 0
  "verdict": {"checks": [...], "passed", "total", "summary": one line} | null   # see verdict.py
}
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetuner import artifacts, ui
from finetuner.formatting import encode_prompt, render_messages_prompt, render_prompt

METRICS = ("rouge1", "rouge2", "rougeL")
METRIC_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
REPORT_FILE = "benchmark.json"


# ---- scoring --------------------------------------------------------------------------------

def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over pairs, with Porter stemming ("cats" matches "cat")."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {m: 0.0 for m in METRICS}
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    totals = dict.fromkeys(METRICS, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for m in METRICS:
            totals[m] += scores[m].fmeasure
    return {m: totals[m] / len(predictions) for m in METRICS}


# ---- generation -----------------------------------------------------------------------------

def generate(model, tokenizer, prompts: list[str | list[dict]], max_new_tokens: int,
             batch_size: int = 8, min_new_tokens: int = 0) -> tuple[list[str], dict]:
    """Greedy answers to raw user prompts, decoded from the new tokens only.

    Returns the answers and {"generated_tokens", "decoded_tokens", "seconds", "tokens_per_s"}.
    generated_tokens are the answers' own (up to the first stop token); tokens_per_s is decoding
    throughput, decoded_tokens / seconds, where a batch decodes every row until its longest answer
    stops. Counting only answer tokens would make a model that stops early in some rows of a batch
    look slower, though each step costs it the same.
    """
    import torch

    model.eval()
    saved = tokenizer.padding_side, tokenizer.pad_token
    # Decoder-only models continue from the last position, so padding must go on the left;
    # right padding would make short prompts continue after pad tokens.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = _stop_ids(model, tokenizer)
    answers: list[str] = []
    generated = decoded = 0
    start = time.perf_counter()
    try:
        for i in range(0, len(prompts), batch_size):
            # A chat row's prompt is its whole history, rendered exactly as in training.
            texts = [render_messages_prompt(tokenizer, p) if isinstance(p, list) else render_prompt(tokenizer, p)
                     for p in prompts[i:i + batch_size]]
            # The same ids training put before each response, padded on the left.
            batch = tokenizer.pad({"input_ids": encode_prompt(tokenizer, texts)}, padding=True,
                                  return_tensors="pt").to(model.device)
            with torch.inference_mode():
                output = model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                        do_sample=False,
                                        temperature=None, top_p=None, top_k=None,
                                        pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            generated += sum(_answer_length(row, stop_ids) for row in new_tokens.tolist())
            decoded += new_tokens.numel()
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side, tokenizer.pad_token = saved
    seconds = time.perf_counter() - start
    return answers, {"generated_tokens": generated, "decoded_tokens": decoded, "seconds": round(seconds, 3),
                     "tokens_per_s": round(decoded / seconds, 2) if seconds > 0 else 0.0}


def _stop_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _answer_length(tokens: list[int], stop_ids: set[int]) -> int:
    """Tokens the model actually produced: up to and including its first stop token.
    What follows is padding added because other rows of the batch were still going."""
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return position + 1
    return len(tokens)


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


# ---- memory ---------------------------------------------------------------------------------

class _PeakMemory:
    """Peak extra memory while generating, in bytes: CUDA's max_memory_allocated above its level
    at the start, or on CPU the process's peak RSS above its RSS at the start.

    On Linux the kernel's RSS high-water mark is reset first (/proc/self/clear_refs), so an
    earlier, bigger model does not hide this one's peak. Elsewhere ru_maxrss cannot be reset
    and the growth is a lower bound (0 if the process had peaked higher before).
    """

    def __init__(self, device) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def __enter__(self) -> _PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.linux_hwm = _reset_rss_peak()
            self.start = _rss_bytes() if self.linux_hwm else _max_rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _proc_status_kb("VmHWM") * 1024 if self.linux_hwm else _max_rss_bytes()
        self.growth = max(0, peak - self.start)


def _proc_status_kb(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (proc(5))
        return _proc_status_kb("VmHWM") > 0
    except OSError:
        return False


def _rss_bytes() -> int:
    return _proc_status_kb("VmRSS") * 1024


def _max_rss_bytes() -> int:
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _weight_bytes(model) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


# ---- one model ------------------------------------------------------------------------------

@dataclass
class TeacherSignal:
    """What fidelity compares a model with: the teacher's answers, and its top-1 predictions on
    the reference tokens (None when the teacher answered from a file, without weights)."""
    answers: list[str]
    top1: list[list[int]] | None = None


@dataclass
class ModelResult:
    label: str
    rouge: dict[str, float]
    parameters: int | None  # None: a teacher that answered from teacher_heldout.jsonl (no weights here)
    size_on_disk_mb: float | None  # None for a model that exists only in memory
    tokens_per_s: float | None  # decoding throughput; see `generate`
    # Memory this model needs to answer: its weights (parameters + buffers) plus the peak
    # growth while decoding one batch (activations, KV cache); see _PeakMemory for how it is measured.
    peak_memory_mb: float | None
    samples: list[dict[str, str]] = field(default_factory=list)  # every prompt/reference/generation
    perplexity: float | None = None  # of the reference answers
    loop_rate: float = 0.0  # share of answers with a 4-gram repeated 3+ times (metrics.loop_rate)
    # Fidelity to the teacher: ROUGE-L of this model's answers against the teacher's, and top-1
    # agreement with the teacher on the reference tokens. None for the teacher and without one.
    fidelity_rougeL: float | None = None
    top1_agreement: float | None = None
    source: str = "weights"  # "answers file": scored from teacher_heldout.jsonl


SPEED_TOKENS = 64  # new tokens per row when timing decoding (at most max_new_tokens)
# Rows answered at once. Decoding a small model on CPU is bound by reading its weights once per
# step, so 20 rows cost little more than 8: 40 GSM8K answers of 96 tokens from the built-in teacher
# took 25.5 s instead of 42 s (2 cores). Speed and peak memory are still measured at batch_size.
ANSWER_BATCH = 20


def decoding_speed(model, tokenizer, prompts: list, new_tokens: int, batch_size: int) -> float:
    """Tokens/s decoding one batch of the held-out prompts for exactly `new_tokens` tokens a row
    (EOS suppressed until then), so every model does the same work whatever its answers' lengths.
    Timed on its own answers, a model whose answers all stop early pays the prompts' prefill over
    fewer tokens and looks slower: a student that learned to finish its answers measured 1.48x its
    teacher's speed, where its looping twin of the same architecture had measured 1.77x."""
    _, stats = generate(model, tokenizer, prompts[:batch_size], new_tokens, batch_size=batch_size,
                        min_new_tokens=new_tokens)
    return stats["tokens_per_s"]


def evaluate(label: str, model, tokenizer, heldout: list[dict], max_new_tokens: int,
             model_dir: str | Path | None = None, batch_size: int = 8, max_length: int = 512,
             teacher: TeacherSignal | None = None) -> tuple[ModelResult, TeacherSignal]:
    """Answer every held-out prompt and score the answers; also returns this model's own signal,
    so the teacher's evaluation gives what the models after it are compared with."""
    from finetuner.metrics import loop_rate

    prompts = [row.get("messages") or row["prompt"] for row in heldout]
    references = [row["reference"] for row in heldout]
    # A model's first generate call pays one-off setup (up to seconds on CPU, and memory that stays
    # allocated); keep it out of the speed and peak memory measured below, both on one batch.
    generate(model, tokenizer, prompts[:1], max_new_tokens=2)
    answers, _ = generate(model, tokenizer, prompts, max_new_tokens, batch_size=max(batch_size, ANSWER_BATCH))
    with _PeakMemory(model.device) as memory:
        tokens_per_s = decoding_speed(model, tokenizer, prompts, min(max_new_tokens, SPEED_TOKENS), batch_size)
    ppl, top1 = reference_pass(model, tokenizer, heldout, max_length, batch_size)
    result = ModelResult(
        label=label,
        rouge={m: round(v, 4) for m, v in rouge(answers, references).items()},
        parameters=_parameter_count(model),
        size_on_disk_mb=_size_mb(model_dir) if model_dir is not None else None,
        tokens_per_s=tokens_per_s,
        peak_memory_mb=round((_weight_bytes(model) + memory.growth) / 2**20, 1),
        samples=_samples(heldout, answers),
        perplexity=round(ppl, 4),
        loop_rate=round(loop_rate(answers), 4),
    )
    if teacher is not None:
        result.fidelity_rougeL = round(rouge(answers, teacher.answers)["rougeL"], 4)
        if teacher.top1 is not None:
            result.top1_agreement = round(top1_agreement(top1, teacher.top1), 4)
    return result, TeacherSignal(answers, top1)


def evaluate_answers(label: str, answers: list[str], heldout: list[dict]) -> tuple[ModelResult, TeacherSignal]:
    """Score answers written elsewhere (an API teacher's teacher_heldout.jsonl): text metrics only."""
    from finetuner.metrics import loop_rate

    references = [row["reference"] for row in heldout]
    result = ModelResult(label=label, rouge={m: round(v, 4) for m, v in rouge(answers, references).items()},
                         parameters=None, size_on_disk_mb=None, tokens_per_s=None, peak_memory_mb=None,
                         samples=_samples(heldout, answers), loop_rate=round(loop_rate(answers), 4),
                         source="answers file")
    return result, TeacherSignal(answers)


def _samples(heldout: list[dict], answers: list[str]) -> list[dict[str, str]]:
    return [{"prompt": row["prompt"], "reference": row["reference"], "generation": answer}
            for row, answer in zip(heldout, answers)]


def _parameter_count(model) -> int:
    # PreTrainedModel.num_parameters counts 4-bit packed weights at their real size;
    # PeftModel forwards the call to the model it wraps.
    if hasattr(model, "num_parameters"):
        return int(model.num_parameters())
    return sum(p.numel() for p in model.parameters())


def _size_mb(directory: str | Path) -> float:
    files = [p for p in Path(directory).rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


# ---- comparing ------------------------------------------------------------------------------

SFT_BASELINE = "SFT baseline"  # the label of the plainly fine-tuned student (sft_baseline)


def compare(results: list[ModelResult], approach: str) -> dict[str, Any]:
    """The report. Results come in run order: the last one is always the model this run made.

    fine-tuning:  [base, fine-tuned]                 (or just [fine-tuned])
    distillation: [teacher, student before, (SFT baseline,) student after]  (or [teacher, student after])
    """
    from finetuner.verdict import verdict

    if not results:
        raise ValueError("compare needs at least one result")
    final = results[-1]
    teacher = results[0] if approach == "distillation" and len(results) > 1 else None
    baseline = _baseline(results, approach)
    sft = next((r for r in results[:-1] if r.label == SFT_BASELINE), None)
    report: dict[str, Any] = {
        "approach": approach,
        "metrics": list(METRICS),
        "models": [asdict(r) for r in results],
        "baseline": baseline.label if baseline else None,
        "final": final.label,
        "teacher": teacher.label if teacher else None,
        "sft_baseline": sft.label if sft else None,
        "deltas": ({m: round(final.rouge[m] - baseline.rouge[m], 4) for m in METRICS}
                   if baseline else None),
        "retained": ({m: _ratio(final.rouge[m], teacher.rouge[m]) for m in METRICS}
                     if teacher else None),
    }
    report["verdict"] = verdict(report)
    return report


def _baseline(results: list[ModelResult], approach: str) -> ModelResult | None:
    if approach == "distillation":
        return results[1] if len(results) >= 3 and results[1].label != SFT_BASELINE else None
    return results[0] if len(results) >= 2 else None


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 4) if reference > 0 else None


# ---- showing and saving ---------------------------------------------------------------------

QUALITY_HEADERS = ("Model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Fid. RL", "Top-1", "PPL", "Loops")
COST_HEADERS = ("Model", "Params", "Disk MB", "Tok/s", "Peak MB")
# Kept for callers of the one-table layout: the quality table.
TABLE_HEADERS = QUALITY_HEADERS


def table_rows(report: dict) -> list[list[str]]:
    """The quality comparison as text cells (QUALITY_HEADERS): one row per model, then the "Δ"
    and "retained" rows (`table_note` says what they compare). Shared by the terminal and the model card."""
    rows = [[m["label"], *(f"{m['rouge'][k]:.3f}" for k in METRICS), _fixed(m.get("fidelity_rougeL")),
             _percent(m.get("top1_agreement")), _fixed(m.get("perplexity"), 2), _percent(m.get("loop_rate"))]
            for m in report["models"]]
    blank = [""] * (len(QUALITY_HEADERS) - 1 - len(METRICS))
    if report.get("deltas"):
        rows.append(["Δ", *(f"{report['deltas'][k]:+.3f}" for k in METRICS), *blank])
    if report.get("retained"):
        rows.append(["retained", *(_percent(report["retained"][k]) for k in METRICS), *blank])
    return rows


def cost_rows(report: dict) -> list[list[str]]:
    """Size and speed as text cells (COST_HEADERS), one row per model."""
    return [[m["label"], _millions(m["parameters"]), _fixed(m["size_on_disk_mb"], 1),
             _fixed(m["tokens_per_s"], 1), _fixed(m["peak_memory_mb"], 0)] for m in report["models"]]


def table_note(report: dict) -> str:
    notes = []
    if report.get("deltas"):
        notes.append(f"Δ = {report['final']} minus {report['baseline']}")
    if report.get("retained"):
        notes.append(f"retained = {report['final']} as a share of {report['teacher']}")
    if report.get("teacher"):
        notes.append(f"Fid. RL = ROUGE-L against {report['teacher']}'s answers; Top-1 = agreement with "
                     f"{report['teacher']}'s top-1 token on the references")
    notes.append("PPL = perplexity of the references; Loops = share of answers repeating a 4-gram 3+ times")
    return "; ".join(notes)


def _millions(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


def _fixed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _maybe(value: float | None) -> str:
    return _fixed(value, 1)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.0%}"


def show(report: dict, show_samples: int = 0) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No vertical rules: eight columns must fit an 80-column terminal with room for labels.
    tables = [(f"Benchmark: quality on {report.get('samples', '?')} held-out prompts", QUALITY_HEADERS,
               table_rows(report), table_note(report)),
              ("Size and speed", COST_HEADERS, cost_rows(report), "Tok/s and Peak MB: decoding one batch of 8")]
    for title, headers, rows, note in tables:
        grid = Table(title=title, title_justify="left", caption=Text(note) if note else None,
                     caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for i, header in enumerate(headers):
            grid.add_column(header, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            grid.add_row(*(Text(cell) for cell in row))  # Text: labels are user strings, not markup
        ui.console.print(grid)
    if report.get("verdict"):
        ui.console.print(Text("Verdict: " + report["verdict"]["summary"], style="bold"))
        for check in report["verdict"]["checks"]:
            ui.console.print(Text("  " + check["text"]))
    for model in report["models"]:
        for sample in model["samples"][:show_samples]:
            ui.info(f"[{model['label']}] Q: {sample['prompt']}\n  expected: {sample['reference']}\n"
                    f"  answered: {sample['generation']}")


def save(report: dict, out_dir: str | Path) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load(out_dir: str | Path) -> dict | None:
    """The saved report, or None when the run was not benchmarked."""
    path = Path(out_dir) / REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ---- the stage ------------------------------------------------------------------------------

def read_heldout(out_dir: str | Path, limit: int) -> list[dict]:
    rows = artifacts.read_heldout(Path(out_dir))[:limit]
    if not rows:
        raise ui.UserError(f"no held-out prompts to benchmark in {Path(out_dir) / artifacts.HELDOUT_FILE}",
                           hint="raise eval_fraction so some rows are kept out of training, "
                                "or set benchmark=false")
    return rows


def teacher_answers(out_dir: str | Path, heldout: list[dict]) -> list[str] | None:
    """The teacher's answers to these held-out rows from OUT/teacher_heldout.jsonl ({"prompt",
    "response"} per line, written when the teacher is an API), or None when there is no such file."""
    from finetuner.teachers.generate import TEACHER_HELDOUT_FILE

    path = Path(out_dir) / TEACHER_HELDOUT_FILE
    if not path.is_file():
        return None
    by_prompt = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_prompt[row["prompt"]] = row["response"]
    missing = [row["prompt"] for row in heldout if row["prompt"] not in by_prompt]
    if missing:
        raise ui.UserError(f"{path} has no teacher answer for {len(missing)} of the {len(heldout)} held-out "
                           f"prompts benchmarked", hint="regenerate it, or delete it to load the teacher's weights")
    return [by_prompt[row["prompt"]] for row in heldout]


def run_benchmark(cfg, out_dir: str | Path, models: list[tuple[str, Any, Any, str | Path | None]],
                  show_samples: int = 0) -> dict:
    """Evaluate (label, model, tokenizer, model_dir) in run order (see `compare`), show the
    table, write OUT/benchmark.json and return the report. A teacher entry whose model is a list
    of strings holds its answers (teacher_heldout.jsonl) instead of weights."""
    heldout = read_heldout(out_dir, cfg.benchmark_samples)
    results, teacher = [], None
    for label, model, tokenizer, model_dir in models:
        is_teacher = cfg.is_distillation and not results
        if isinstance(model, list):
            ui.step(f"Scoring {label}'s answers to {len(heldout)} held-out prompts")
            result, signal = evaluate_answers(label, model, heldout)
        else:
            ui.step(f"Benchmarking {label} on {len(heldout)} held-out prompts")
            result, signal = evaluate(label, model, tokenizer, heldout, cfg.max_new_tokens, model_dir,
                                      max_length=cfg.max_length, teacher=None if is_teacher else teacher)
        teacher = signal if is_teacher else teacher
        results.append(result)
    report = {"approach": cfg.approach, "samples": len(heldout), "max_new_tokens": cfg.max_new_tokens,
              **compare(results, cfg.approach)}
    show(report, show_samples)
    save(report, out_dir)
    return report
