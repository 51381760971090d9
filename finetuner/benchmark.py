"""Benchmark: answer held-out prompts with each model, score with ROUGE, compare, save.

The held-out rows (OUT/heldout.jsonl) were never trained on. Every model answers the same
prompts, as the same token ids training put before each response (`render_prompt`, then
`data.encode_prompt`), with greedy decoding, so only the model differs between rows of the table.

benchmark.json (written by `save`):
{
  "approach": "fine-tuning" | "distillation",
  "samples": int, "max_new_tokens": int, "metrics": ["rouge1", "rouge2", "rougeL"],
  "models": [{"label", "rouge": {metric: F1}, "parameters", "size_on_disk_mb" | null,
              "tokens_per_s", "peak_memory_mb", "samples": [{"prompt", "reference", "generation"}]}, ...],
                                               # in run order; the last is the model this run made
  "baseline": label | null,                    # base model / student before distillation
  "final": label,                              # the model this run produced
  "teacher": label | null,                     # distillation only
  "deltas": {metric: final - baseline} | null,
  "retained": {metric: final / teacher} | null # distillation only; null per metric if teacher scored 0
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
from finetuner.data import encode_prompt
from finetuner.formatting import render_messages_prompt, render_prompt

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
             batch_size: int = 8) -> tuple[list[str], dict]:
    """Greedy answers to raw user prompts, decoded from the new tokens only.

    Returns the answers and {"generated_tokens", "seconds", "tokens_per_s"}.
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
    generated = 0
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
                output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                        temperature=None, top_p=None, top_k=None,
                                        pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            generated += sum(_answer_length(row, stop_ids) for row in new_tokens.tolist())
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side, tokenizer.pad_token = saved
    seconds = time.perf_counter() - start
    return answers, {"generated_tokens": generated, "seconds": round(seconds, 3),
                     "tokens_per_s": round(generated / seconds, 2) if seconds > 0 else 0.0}


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
    import torch
    import torch.nn.functional as F

    from finetuner.data import encode_heldout, make_collator

    encoded = encode_heldout(heldout, tokenizer, max_length)
    collate = make_collator(tokenizer)
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            batch = collate([{**e, "attention_mask": [1] * len(e["input_ids"])} for e in encoded[i:i + batch_size]])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                           ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return math.exp(total / count) if count else float("nan")


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
class ModelResult:
    label: str
    rouge: dict[str, float]
    parameters: int
    size_on_disk_mb: float | None  # None for a model that exists only in memory
    tokens_per_s: float
    # Memory this model needs to answer: its weights (parameters + buffers) plus the peak
    # growth while generating (activations, KV cache); see _PeakMemory for how it is measured.
    peak_memory_mb: float
    samples: list[dict[str, str]] = field(default_factory=list)  # prompt/reference/generation


def evaluate(label: str, model, tokenizer, heldout: list[dict], max_new_tokens: int,
             model_dir: str | Path | None = None, keep_samples: int = 3, batch_size: int = 8) -> ModelResult:
    prompts = [row.get("messages") or row["prompt"] for row in heldout]
    references = [row["reference"] for row in heldout]
    # A model's first generate call pays one-off setup (up to seconds on CPU); keep it out of
    # tokens/s so the first model benchmarked is not made to look slower.
    generate(model, tokenizer, prompts[:1], max_new_tokens=2)
    with _PeakMemory(model.device) as memory:
        answers, stats = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    samples = [{"prompt": p, "reference": r, "generation": g}
               for p, r, g in list(zip([row["prompt"] for row in heldout], references, answers))[:keep_samples]]
    return ModelResult(
        label=label,
        rouge={m: round(v, 4) for m, v in rouge(answers, references).items()},
        parameters=_parameter_count(model),
        size_on_disk_mb=_size_mb(model_dir) if model_dir is not None else None,
        tokens_per_s=stats["tokens_per_s"],
        peak_memory_mb=round((_weight_bytes(model) + memory.growth) / 2**20, 1),
        samples=samples,
    )


def from_answers(label: str, heldout: list[dict], answers: dict[str, str], keep_samples: int = 3) -> ModelResult:
    """A model known only by its answers (an API teacher's cached held-out answers): ROUGE only."""
    generations = [answers.get(row["prompt"], "") for row in heldout]
    references = [row["reference"] for row in heldout]
    samples = [{"prompt": row["prompt"], "reference": ref, "generation": gen}
               for row, ref, gen in list(zip(heldout, references, generations))[:keep_samples]]
    return ModelResult(label=label, rouge={m: round(v, 4) for m, v in rouge(generations, references).items()},
                       parameters=0, size_on_disk_mb=None, tokens_per_s=0.0, peak_memory_mb=0.0, samples=samples)


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

def compare(results: list[ModelResult], approach: str) -> dict[str, Any]:
    """The report. Results come in run order: the last one is always the model this run made.

    fine-tuning:  [base, fine-tuned]                 (or just [fine-tuned])
    distillation: [teacher, student before, student after]  (or [teacher, student after])
    """
    if not results:
        raise ValueError("compare needs at least one result")
    final = results[-1]
    teacher = results[0] if approach == "distillation" and len(results) > 1 else None
    baseline = _baseline(results, approach)
    report: dict[str, Any] = {
        "approach": approach,
        "metrics": list(METRICS),
        "models": [asdict(r) for r in results],
        "baseline": baseline.label if baseline else None,
        "final": final.label,
        "teacher": teacher.label if teacher else None,
        "deltas": ({m: round(final.rouge[m] - baseline.rouge[m], 4) for m in METRICS}
                   if baseline else None),
        "retained": ({m: _ratio(final.rouge[m], teacher.rouge[m]) for m in METRICS}
                     if teacher else None),
    }
    return report


def _baseline(results: list[ModelResult], approach: str) -> ModelResult | None:
    if approach == "distillation":
        return results[1] if len(results) >= 3 else None
    return results[0] if len(results) >= 2 else None


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 4) if reference > 0 else None


# ---- showing and saving ---------------------------------------------------------------------

TABLE_HEADERS = ("Model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Params", "Disk MB", "Tok/s", "Peak MB")


def table_rows(report: dict) -> list[list[str]]:
    """The comparison as text cells (TABLE_HEADERS): one row per model, then the "Δ" and
    "retained" rows (`table_note` says what they compare). Shared by the terminal table and
    the model card."""
    rows = [[m["label"], *(f"{m['rouge'][k]:.3f}" for k in METRICS), _millions(m["parameters"]),
             _maybe(m["size_on_disk_mb"]), f"{m['tokens_per_s']:.1f}", f"{m['peak_memory_mb']:.0f}"]
            for m in report["models"]]
    blank = [""] * (len(TABLE_HEADERS) - 1 - len(METRICS))
    if report.get("deltas"):
        rows.append(["Δ", *(f"{report['deltas'][k]:+.3f}" for k in METRICS), *blank])
    if report.get("retained"):
        rows.append(["retained", *(_percent(report["retained"][k]) for k in METRICS), *blank])
    return rows


def table_note(report: dict) -> str:
    notes = []
    if report.get("deltas"):
        notes.append(f"Δ = {report['final']} minus {report['baseline']}")
    if report.get("retained"):
        notes.append(f"retained = {report['final']} as a share of {report['teacher']}")
    return "; ".join(notes)


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.0%}"


def show(report: dict, show_samples: int = 0) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # No vertical rules: eight columns must fit an 80-column terminal with room for labels.
    grid = Table(title=f"Benchmark: ROUGE F1 on {report.get('samples', '?')} held-out prompts",
                 title_justify="left", caption=Text(table_note(report)) or None, caption_justify="left",
                 box=box.SIMPLE_HEAD, pad_edge=False)
    for i, header in enumerate(TABLE_HEADERS):
        grid.add_column(header, justify="left" if i == 0 else "right", overflow="fold")
    for row in table_rows(report):
        grid.add_row(*(Text(cell) for cell in row))  # Text: labels are user strings, not markup
    ui.console.print(grid)
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


def run_benchmark(cfg, out_dir: str | Path, models: list[tuple[str, Any, Any, str | Path | None]],
                  show_samples: int = 0) -> dict:
    """Evaluate (label, model, tokenizer, model_dir) in run order (see `compare`), show the
    table, write OUT/benchmark.json and return the report."""
    heldout = read_heldout(out_dir, cfg.benchmark_samples)
    results = []
    for label, model, tokenizer, model_dir in models:
        ui.step(f"Benchmarking {label} on {len(heldout)} held-out prompts")
        if isinstance(model, dict):  # answers, not weights (an API teacher)
            results.append(from_answers(label, heldout, model, keep_samples=max(3, show_samples)))
            continue
        results.append(evaluate(label, model, tokenizer, heldout, cfg.max_new_tokens, model_dir,
                                keep_samples=max(3, show_samples)))
    report = {"approach": cfg.approach, "samples": len(heldout), "max_new_tokens": cfg.max_new_tokens,
              **compare(results, cfg.approach)}
    show(report, show_samples)
    save(report, out_dir)
    return report
