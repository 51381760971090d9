#!/usr/bin/env python
"""What the top-k teacher cache costs and saves, side by side in one run.

    flock /tmp/finetuner-heavy.lock python benchmarks/teacher_cache.py   # ~8 minutes on 2 cores

Teacher: the built-in SmolLM2-135M-Instruct (bf16); student: its 15-layer derived copy (chosen by
calibration, as the wizard does), full training, bf16 autocast; GSM8K rows prepared by
finetuner.data.preparing.prepare. Each contender runs in its own process (this script with --contender):
- plain: plain fine-tuning of the student (CE only) for the same steps;
- cached: distillation with `teacher_cache` in a new directory: the build (teacher load included),
  then training that reads the cache;
- live: distillation with the teacher running every step (today's default);
- study: a bare teacher forward pass over the same rows vs the cache build (throughput share), and
  for k in K_VALUES, how far the cached loss is from the full-logit loss on the untrained student
  (gradient L1 gap per token, its bound, KL ratio) and what the uniform-tail alternative would be off.
Wall times are of trainer.train() (and of the build), not of loading the student.

    python benchmarks/teacher_cache.py --quality-only --samples 24   # a few minutes on 2 cores
    python benchmarks/teacher_cache.py --quality-only --sweep --samples 24   # other splits of 392 bytes, T 2

reports only the quality of the cached objective against the full-logit one (no timings), for the
old default (top-64, the tail as one bucket), top-32 plus TAIL_SAMPLES independent draws from the tempered
tail, and the new default (top-32 plus TAIL_SAMPLES systematic draws from
the tempered tail), at T 1 and T 2, on the untrained derived student and the training rows: the
teacher mass the top k keep (tempered), the cached KL over the full KL, and the cosine between the
cached and full gradients at the student's last hidden states (of the distillation term alone, and
of the whole loss at the default alpha), with the bytes a counted token on disk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from finetuner.config import RunConfig  # noqa: E402

K_VALUES = (8, 16, 32, 64, 128, 256)
STUDY_ROWS = 8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32, help="GSM8K training rows")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--top-k", type=int, default=RunConfig.teacher_top_k, help="k of the cache timed (default: finetuner's)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--teacher", default=None, help="another teacher (a smoke test on a tiny model)")
    p.add_argument("--student-layers", type=int, default=15)
    p.add_argument("--output", type=Path, help="results JSON (default benchmarks/results/teacher_cache-DATE.json)")
    p.add_argument("--quality-only", action="store_true", help="only the cached objective's quality (no timings)")
    p.add_argument("--sweep", action="store_true", help="with --quality-only: other splits of 392 bytes, at T 2 only")
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config(args, out: str, **extra):
    from finetuner.config import RunConfig

    from finetuner.config import BUILTIN_MODEL

    teacher = args.teacher or BUILTIN_MODEL
    return RunConfig(approach="distillation", output_dir=out, teacher=teacher, student=teacher,
                     student_layers=args.student_layers, max_samples=args.samples, max_length=args.max_length,
                     batch_size=args.batch_size, gradient_accumulation=1, epochs=args.epochs, eval_fraction=0.0,
                     save_steps=10_000, benchmark=False, teacher_top_k=args.top_k, **extra)


def run_contender(name: str, args) -> dict:
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback

    from finetuner import models, training
    from finetuner.data.preparing import make_collator
    from finetuner.recipe import Recipe
    from finetuner.teachers import topk_build
    from finetuner.training import arguments, student as students

    torch.set_num_threads(args.threads)

    class NoSaves(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = False  # checkpoints are not what is measured

    with tempfile.TemporaryDirectory(prefix=f"teacher-cache-{name}-") as out:
        if name == "study":
            return run_study(args, out)
        cfg = config(args, out, teacher_cache=str(Path(out) / "cache") if name == "cached" else None)
        recipe = Recipe.of(cfg)
        result = {}
        if name == "plain":
            tokenizer = models.load_tokenizer(cfg.student)
            data = training.prepare_data(cfg, tokenizer)
            student, _ = students.build(recipe, data.train, make_collator(tokenizer), Path(out))
            trainer = Trainer(model=student, args=arguments.training_arguments(cfg, Path(out)),
                              train_dataset=data.train, data_collator=make_collator(tokenizer),
                              processing_class=tokenizer)
        else:
            real_ensure = topk_build.ensure

            def timed_ensure(*a, **kw):
                started = time.perf_counter()
                cache = real_ensure(*a, **kw)
                result["build_seconds"] = round(time.perf_counter() - started, 2)
                files = list(Path(cfg.teacher_cache).glob("shard-*.safetensors"))
                result["cache_bytes"] = sum(p.stat().st_size for p in files)
                result["counted_tokens"] = cache.manifest["counted_tokens"]
                result["bytes_per_counted_token"] = round(result["cache_bytes"] / result["counted_tokens"], 1)
                return cache

            topk_build.ensure = timed_ensure
            trainer, *_ = training.build(cfg, recipe)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(NoSaves())
        started = time.perf_counter()
        trainer.train()
        result["train_seconds"] = round(time.perf_counter() - started, 2)
        result["steps"] = trainer.state.global_step
        result["losses"] = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
        result["kl"] = [h.get("kl") for h in trainer.state.log_history if "loss" in h]
        result["load_average"] = os.getloadavg()
        return result


def run_study(args, out: str) -> dict:
    """Build throughput against a bare teacher forward, and the loss gap against k."""
    import torch

    from finetuner import models
    from finetuner.data.preparing import make_collator, prepare
    from finetuner.losses import kd_loss, select_targets
    from finetuner.objectives.topk import gradient_bound, teacher_buckets, teacher_topk, topk_kd_loss
    from finetuner.recipe import Recipe
    from finetuner.teachers import topk_build, topk_cache
    from finetuner.training import student as students

    cfg = config(args, out, teacher_cache=str(Path(out) / "cache"))
    tokenizer = models.load_tokenizer(cfg.teacher)
    data = prepare(cfg, tokenizer)
    teacher = models.load_teacher(cfg.teacher, models.precision_policy())
    collate = make_collator(tokenizer)
    rows = data.train
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # as the build batches them

    def bare_forward() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(order), cfg.batch_size):
                batch = collate([rows[i] for i in order[start:start + cfg.batch_size]])
                hidden = teacher.get_decoder()(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).last_hidden_state
                mask, _ = select_targets(batch["labels"])
                teacher.get_output_embeddings()(hidden[:, :-1][mask]).float()
        return time.perf_counter() - started

    bare_forward()  # warm-up
    forward_s = min(bare_forward() for _ in range(2))
    build_s = []
    for attempt in range(2):
        target = Path(out) / f"cache{attempt}"
        cfg_k = config(args, out, teacher_cache=str(target))
        started = time.perf_counter()
        topk_build.ensure(cfg_k, rows, tokenizer, models.check_tokenizers_match(tokenizer, tokenizer),
                          lambda: teacher)
        build_s.append(time.perf_counter() - started)
    result = {"bare_forward_seconds": round(forward_s, 2), "build_seconds_teacher_loaded": round(min(build_s), 2),
              "build_throughput_share": round(forward_s / min(build_s), 3)}

    # The loss gap against k, on the student training starts from.
    student, _ = students.build(Recipe.of(cfg), rows, collate, Path(out))
    student.eval()
    batch = collate([rows[i] for i in range(STUDY_ROWS)])
    with torch.inference_mode():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"]
    mask, _ = select_targets(labels)
    temperature, alpha = cfg.temperature, cfg.alpha
    count = int(mask.sum())
    full_s = student_logits.clone().requires_grad_()
    full = kd_loss(full_s, teacher_logits, labels, temperature=temperature, alpha=alpha)
    (full_grad,) = torch.autograd.grad(full.loss * count, full_s)
    rows_t = teacher_logits[:, :-1][mask]
    by_k = []
    for k in K_VALUES:
        entries = teacher_topk(rows_t, k, temperature)
        s = student_logits.clone().requires_grad_()
        cached = topk_kd_loss(s, entries, labels, temperature=temperature, alpha=alpha)
        (grad,) = torch.autograd.grad(cached.loss * count, s)
        gap = (grad - full_grad)[:, :-1][mask].abs().sum(-1)
        tail = teacher_buckets(entries, temperature)[:, -1].exp()
        # The alternative: the remaining mass spread uniformly over the V - k other ids, then tempered.
        others = rows_t.shape[-1] - k
        mass = (1 - entries.logprobs.exp().sum(-1)).clamp_min(1e-30)
        uniform_w = others * (mass / others) ** (1 / temperature)
        uniform_tail = uniform_w / ((entries.logprobs / temperature).exp().sum(-1) + uniform_w)
        by_k.append({
            "k": k, "bytes_per_token": topk_cache.bytes_per_token(k),
            "teacher_mass_in_top_k_T1": round(float(entries.logprobs.exp().sum(-1).mean()), 4),
            "tempered_tail_mass": round(float(tail.mean()), 4),
            "uniform_tail_estimate": round(float(uniform_tail.mean()), 4),
            "grad_l1_gap_mean": round(float(gap.mean()), 4),
            "grad_l1_bound_mean": round(float(gradient_bound(entries, temperature, alpha).mean()), 4),
            "grad_l1_full_mean": round(float(full_grad[:, :-1][mask].abs().sum(-1).mean()), 4),
            "kl_cached_over_full": round(float(cached.kl / full.kl), 4),
        })
    result.update(study_tokens=count, temperature=temperature, alpha=alpha, by_k=by_k)
    return result


SCHEMES = {"old default: top-64, tail bucket": (64, 0, False),
           "top-32 + 128 independent tail draws (previous default)": (32, 128, False),
           "top-32 + 128 systematic tail draws": (32, 128, True),
           "new default: top-8 + 176 systematic tail draws": (8, None, True)}
# The same 392 bytes split otherwise (--sweep): fewer exact ids, more draws.
SWEEP = {"top-16 + 160 systematic tail draws": (16, 160, True), "top-1 + 190 systematic tail draws": (1, 190, True)}


def run_quality(args, out: str) -> dict:
    """Kept mass, KL ratio and gradient cosines of the cached loss against the full-logit loss."""
    import torch

    from finetuner import logits, models
    from finetuner.data.preparing import make_collator, prepare
    from finetuner.losses import kd_loss_from_hidden, select_targets
    from finetuner.objectives.topk import teacher_topk, topk_kd_loss_from_hidden
    from finetuner.recipe import Recipe
    from finetuner.teachers import topk_cache
    from finetuner.teachers.topk_quality import kept_mass
    from finetuner.training import student as students

    torch.set_num_threads(args.threads)
    cfg = config(args, out)
    tokenizer = models.load_tokenizer(cfg.teacher)
    rows = prepare(cfg, tokenizer).train
    teacher = models.load_teacher(cfg.teacher, models.precision_policy())
    collate = make_collator(tokenizer)
    student, _ = students.build(Recipe.of(cfg), rows, collate, Path(out))
    student.eval()
    vocab = models.check_tokenizers_match(tokenizer, tokenizer)
    t_head, s_head = logits.head_of(teacher), logits.head_of(student)
    batches = []
    with torch.inference_mode():
        for start in range(0, len(rows), cfg.batch_size):
            batch = collate([rows[i] for i in range(start, min(start + cfg.batch_size, len(rows)))])
            decoder_in = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            t_hidden = teacher.get_decoder()(**decoder_in).last_hidden_state
            s_hidden = student.get_decoder()(**decoder_in).last_hidden_state
            mask, _ = select_targets(batch["labels"])
            batches.append((s_hidden, t_hidden, batch["labels"], t_head(t_hidden[:, :-1][mask])[:, :vocab].float()))
    results = []
    for temperature in (2.0,) if args.sweep else (1.0, 2.0):
        for name, (k, samples, systematic) in (SWEEP if args.sweep else SCHEMES).items():
            samples = topk_cache.TAIL_SAMPLES if samples is None else samples
            full_kl = cached_kl = kept = count = 0.0
            grads = {alpha: ([], []) for alpha in (0.0, cfg.alpha)}
            for number, (s_hidden, t_hidden, labels, t_logits) in enumerate(batches):
                uniforms = torch.rand(len(t_logits), samples, generator=torch.Generator().manual_seed(number))
                entries = teacher_topk(t_logits, k, temperature, uniforms if samples else None, systematic)
                n = len(t_logits)
                kept, count = kept + kept_mass(entries, temperature) * n, count + n
                for alpha, (full_grads, cached_grads) in grads.items():
                    h1, h2 = s_hidden.clone().requires_grad_(), s_hidden.clone().requires_grad_()
                    full = kd_loss_from_hidden(h1, t_hidden, s_head, t_head, labels, temperature, alpha,
                                               num_items_in_batch=1, vocab_size=vocab)
                    cached = topk_kd_loss_from_hidden(h2, s_head, labels, entries, vocab, temperature, alpha,
                                                      num_items_in_batch=1)
                    full_grads.append(torch.autograd.grad(full.loss, h1)[0].flatten().double())
                    cached_grads.append(torch.autograd.grad(cached.loss, h2)[0].flatten().double())
                    if alpha == 0.0:
                        full_kl, cached_kl = full_kl + float(full.kl), cached_kl + float(cached.kl)

            def cosine(pair):
                return round(float(torch.nn.functional.cosine_similarity(torch.cat(pair[0]), torch.cat(pair[1]), 0)), 5)

            results.append({"temperature": temperature, "scheme": name, "k": k, "tail_samples": samples,
                            "bytes_per_token": topk_cache.bytes_per_token(k, vocab, samples) if samples else
                            k * (topk_cache.LOGPROB_BYTES + 4) + 4,
                            "kept_mass": round(kept / count, 4), "kl_cached_over_full": round(cached_kl / full_kl, 4),
                            "grad_cosine_distillation_term": cosine(grads[0.0]),
                            f"grad_cosine_whole_loss_alpha_{cfg.alpha:g}": cosine(grads[cfg.alpha]),
                            "counted_tokens": int(count)})
            print(json.dumps(results[-1]), flush=True)
    return {"rows": len(rows), "quality": results}


def run_child(what: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, "--contender", what, "--result", result.name,
                   "--samples", str(args.samples), "--max-length", str(args.max_length),
                   "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--top-k", str(args.top_k),
                   "--threads", str(args.threads), "--student-layers", str(args.student_layers)]
        command += ["--teacher", args.teacher] if args.teacher else []
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
            raise SystemExit(f"{what} failed (exit {proc.returncode})")
        data = json.loads(Path(result.name).read_text())
        data["process_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{what}: {json.dumps(data)[:400]}", flush=True)
        return data


def report(results: dict, args) -> dict:
    plain, cached, live = results["plain"], results["cached"], results["live"]
    steps = plain["steps"]
    per_epoch = {name: results[name]["train_seconds"] / args.epochs for name in ("plain", "cached", "live")}
    saved_per_epoch = per_epoch["live"] - per_epoch["cached"]
    summary = {
        "cached_with_build_over_plain": round((cached["build_seconds"] + cached["train_seconds"])
                                                        / plain["train_seconds"], 3),
        "cached_train_over_plain": round(cached["train_seconds"] / plain["train_seconds"], 3),
        "live_over_plain": round(live["train_seconds"] / plain["train_seconds"], 3),
        "cached_with_build_over_live": round((cached["build_seconds"] + cached["train_seconds"])
                                             / live["train_seconds"], 3),
        "break_even_epochs": round(cached["build_seconds"] / saved_per_epoch, 2) if saved_per_epoch > 0 else None,
        "build_throughput_share_of_bare_forward": results["study"]["build_throughput_share"],
        "bytes_per_counted_token": cached["bytes_per_counted_token"],
        "steps": steps,
    }
    return summary


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.contender:
        args.result.write_text(json.dumps(run_contender(args.contender, args)))
        return
    started = time.perf_counter()
    if args.quality_only:
        date = datetime.date.today().isoformat()
        name = "teacher_cache-quality-sweep" if args.sweep else "teacher_cache-quality"
        output = args.output or ROOT / "benchmarks" / "results" / f"{name}-{date}.json"
        with tempfile.TemporaryDirectory(prefix="teacher-cache-quality-") as out:
            doc = {"date": date, "machine": f"{os.cpu_count()} CPU cores, no GPU",
                   "command": "python benchmarks/teacher_cache.py " + " ".join(sys.argv[1:]),
                   **run_quality(args, out), "total_seconds": None}
        doc["total_seconds"] = round(time.perf_counter() - started, 1)
        output.write_text(json.dumps(doc, indent=1))
        print(f"wrote {output}")
        return
    # The built-in's one-time conversion, kept out of every contender's time.
    from finetuner import models
    from finetuner.config import BUILTIN_MODEL

    models.resolve_model_path(BUILTIN_MODEL)
    results = {name: run_child(name, args) for name in ("plain", "cached", "live", "study")}
    summary = report(results, args)
    date = datetime.date.today().isoformat()
    output = args.output or ROOT / "benchmarks" / "results" / f"teacher_cache-{date}.json"
    doc = {"date": date, "machine": f"{os.cpu_count()} CPU cores, no GPU", "command": "python benchmarks/teacher_cache.py "
           + " ".join(sys.argv[1:]), "settings": vars(args) | {"output": str(output)}, "summary": summary,
           "results": results, "total_seconds": round(time.perf_counter() - started, 1)}
    output.write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps(summary, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
