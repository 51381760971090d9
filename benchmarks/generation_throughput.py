#!/usr/bin/env python
"""How fast a teacher writes responses (distillation_mode responses / hybrid).

    python benchmarks/generation_throughput.py            # ~3 minutes on 2 cores
    python benchmarks/generation_throughput.py --prompts 8 --requests 24   # quicker

Local teacher: the built-in SmolLM2-135M-Instruct (bf16 on CPU) answers the same GSM8K prompts
one at a time (batch 1) and in left-padded batches (finetuner's LocalTeacher), greedy, the same
number of new tokens; prompts/s for each, side by side in one run.

API teacher: finetuner's ApiTeacher (the openai client, AsyncOpenAI + semaphore) against an
OpenAI-compatible server on 127.0.0.1 that answers every request after a fixed latency (the test
suite's tests/teacher_server.py), at concurrency 1, 4 and 16. This measures what the client
controls, requests in flight, with a server whose latency stands in for a remote API; a real
server's own throughput limits are not modelled.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gsm8k_prompts(count: int) -> list[str]:
    from finetuner.sources import builtin_dataset_file

    lines = builtin_dataset_file("gsm8k").read_text().splitlines()[:count]
    return [json.loads(line)["question"] for line in lines]


def requests_for(prompts):
    from finetuner.teachers.response_cache import Request

    return [Request("answer", p, (("user", p),)) for p in prompts]


def local(prompts: list[str], new_tokens: int, batch: int) -> dict:
    from finetuner.config import RunConfig
    from finetuner.teachers.local import LocalTeacher

    cfg = RunConfig(approach="distillation", distillation_mode="responses", generation_max_new_tokens=new_tokens)
    teacher = LocalTeacher(cfg)
    teacher.load()
    results = {}
    # Warm-up (first generate call pays one-off setup), then alternate once each way.
    teacher.generate(requests_for(prompts[:1]), lambda r, a: None, lambda: False)
    for size in (1, batch):
        teacher.cfg = dataclasses.replace(cfg, generation_batch_size=size)
        tokens = []
        started = time.perf_counter()
        teacher.generate(requests_for(prompts), lambda r, a: tokens.append(a.completion_tokens), lambda: False)
        seconds = time.perf_counter() - started
        results[f"batch {size}"] = {"prompts": len(prompts), "seconds": round(seconds, 2),
                                    "prompts_per_s": round(len(prompts) / seconds, 3),
                                    "new_tokens_per_s": round(sum(tokens) / seconds, 1)}
    return results


def api(requests: int, latency: float, levels: tuple[int, ...]) -> dict:
    from teacher_server import TeacherServer

    from finetuner.config import RunConfig
    from finetuner.teachers.api import ApiTeacher

    results = {}
    with TeacherServer(delay=latency) as server:
        for level in levels:
            cfg = RunConfig(approach="distillation", distillation_mode="responses", teacher="ok",
                            teacher_api_base=server.base, generation_concurrency=level)
            prompts = [f"Question {level}-{i}?" for i in range(requests)]
            started = time.perf_counter()
            ApiTeacher(cfg).generate(requests_for(prompts), lambda r, a: None, lambda: False)
            seconds = time.perf_counter() - started
            results[f"concurrency {level}"] = {"requests": requests, "seconds": round(seconds, 2),
                                               "requests_per_s": round(requests / seconds, 2)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="GSM8K prompts for the local teacher")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48, help="requests per API concurrency level")
    parser.add_argument("--latency", type=float, default=0.25, help="the API server's seconds per reply")
    parser.add_argument("--parts", default="local,api", help="which measurements: local, api or both")
    parser.add_argument("--output", type=Path, help="where to write the JSON (default benchmarks/results/...)")
    args = parser.parse_args()
    import torch

    report = {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} CPU cores, "
              f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
              "python": platform.python_version(), "command": " ".join(["python"] + sys.argv),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if "local" in args.parts:
        report["local"] = local(gsm8k_prompts(args.prompts), args.new_tokens, args.batch)
        one, many = report["local"]["batch 1"], report["local"][f"batch {args.batch}"]
        report["local_speedup"] = round(many["prompts_per_s"] / one["prompts_per_s"], 2)
    if "api" in args.parts:
        report["api"] = api(args.requests, args.latency, (1, 4, 16))
    out = args.output or ROOT / "benchmarks" / "results" / f"generation_throughput-{report['date']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
