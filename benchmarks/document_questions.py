"""Quality of questions and answers written from documents (README's documents example), with
`transformers serve` serving the built-in SmolLM2-135M-Instruct as the teacher.

Runs `finetune_cli.py --generate-only` on four real Markdown documents shipped with installed
packages, then measures, from the run's teacher_responses.jsonl:
- real questions: the share of the questions sent for answering that are questions a user would
  ask: they end in "?", start with a question word (what, how, does, ...), have four words or
  more, and hold no markdown (#, `, *, |);
- grounded answers: the share of non-empty answers that quote or paraphrase their chunk: at least
  half of the answer's content words (4+ letters, not stop words) occur in the chunk the question
  was written from. An answer's chunk is the one sent with it (grounded requests), else the chunk
  whose questions reply contains the question (the older closed-book requests).

Before/after: `--code DIR` runs another checkout's finetune_cli.py, e.g. the commit before:
    mkdir -p /tmp/ft-before && git archive 7907d61 | tar -x -C /tmp/ft-before
    python benchmarks/document_questions.py --code /tmp/ft-before --tag before
    python benchmarks/document_questions.py --tag after
A quality measure (no timing). 4 chunks and 12 questions by default: about 16 requests, minutes on
an idle 2-core CPU (much longer on a busy one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOCS = ("pyparsing/ai/best_practices.md", "fastapi/.agents/skills/fastapi/references/dependencies.md",
        "fastapi/.agents/skills/fastapi/references/streaming.md", "package_readme.md")
QUESTION_WORDS = {"what", "how", "why", "when", "where", "which", "who", "whom", "whose", "is", "are", "does", "do",
                  "did", "can", "could", "should", "would", "will", "was", "were", "has", "have", "in", "according"}
STOP = {"that", "this", "with", "from", "have", "they", "their", "which", "what", "when", "will", "would", "there",
        "about", "your", "into", "also", "more", "than", "then", "them", "these", "those", "such", "some", "only",
        "other", "each", "very", "just", "used", "uses", "does", "text", "question", "answer"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose finetune_cli.py runs (default: this one)")
    parser.add_argument("--tag", default="after")
    parser.add_argument("--teacher", help="a local model directory to serve (default: the built-in SmolLM2-135M)")
    parser.add_argument("--questions-per-chunk", type=int, default=3)
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--max-samples", type=int, default=12, help="questions answered, at most")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--doc-chars", type=int, default=2000,
                        help="each document's first paragraphs up to this many characters (about one chunk)")
    parser.add_argument("--out", help="output directory (default: a temporary one)")
    args = parser.parse_args()

    from finetuner import models

    served = args.teacher or models.resolve_model_path("smollm2-135m-instruct")
    work = Path(tempfile.mkdtemp(prefix="document-questions-"))
    docs = _documents(work / "docs", args.doc_chars)
    out = Path(args.out or work / "out")
    with _serve(served) as base:
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "finetune_cli.py", "--defaults", "--yes", "--generate-only", *_sets({
                "approach": "distillation", "distillation_mode": "responses", "teacher_api_base": base,
                "teacher": served, "student": "smollm2-135m-instruct", "dataset": str(docs),
                "questions_per_chunk": args.questions_per_chunk, "chunk_tokens": args.chunk_tokens,
                "max_samples": args.max_samples, "generation_max_new_tokens": args.max_new_tokens,
                "generation_concurrency": 1, "generation_timeout": 900, "generation_min_kept": 0, "output_dir": str(out), "benchmark": False})],
            cwd=args.code, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    print(run.stdout[-3000:], run.stderr[-2000:], sep="\n")
    figures = measure(out / "teacher_responses.jsonl")
    figures.update({"tag": args.tag, "code": args.code, "exit_code": run.returncode, "seconds": round(seconds, 1),
                    "teacher": f"{args.teacher or 'SmolLM2-135M-Instruct (built-in)'} via transformers serve", "documents": list(DOCS),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("code", "tag", "out", "teacher")}})
    print(json.dumps({k: v for k, v in figures.items() if k != "examples"}, indent=1))
    results = ROOT / "benchmarks" / "results" / f"document_questions-{args.tag}-{date.today()}.json"
    results.write_text(json.dumps(figures, indent=1))
    print(f"written to {results}")


def measure(cache: Path) -> dict:
    lines = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    asks = [line for line in lines if line["kind"] == "questions"]
    answers = [line for line in lines if line["kind"] == "answer"]
    chunks = [a["messages"][-1]["content"].split("Text:\n", 1)[-1] for a in asks]
    real = [a["prompt"] for a in answers if is_real_question(a["prompt"])]
    grounded, overlaps, examples = 0, [], []
    written = [a for a in answers if a["response"].strip()]
    for answer in written:
        chunk = _chunk_of(answer, asks, chunks)
        overlap = content_overlap(answer["response"], chunk) if chunk else 0.0
        overlaps.append(overlap)
        grounded += overlap >= 0.5
        if len(examples) < 6:
            examples.append({"question": answer["prompt"], "answer": answer["response"][:300],
                             "overlap": round(overlap, 2)})
    return {"chunks": len(asks), "questions": len(answers), "real_questions": len(real),
            "real_question_share": round(len(real) / max(len(answers), 1), 3),
            "answers_written": len(written), "grounded_answers": grounded,
            "grounded_share": round(grounded / max(len(written), 1), 3),
            "mean_content_overlap": round(sum(overlaps) / max(len(overlaps), 1), 3),
            "non_questions": [a["prompt"] for a in answers if not is_real_question(a["prompt"])][:10],
            "examples": examples}


def is_real_question(text: str) -> bool:
    words = text.split()
    return (text.strip().endswith("?") and len(words) >= 4 and words[0].casefold().strip("\"'") in QUESTION_WORDS
            and not re.search(r"[#`*|]", text))


def content_overlap(answer: str, chunk: str) -> float:
    """The share of the answer's content words that occur in the chunk."""
    said = [w for w in re.findall(r"[a-z0-9_]{4,}", answer.casefold()) if w not in STOP]
    source = set(re.findall(r"[a-z0-9_]{4,}", chunk.casefold()))
    return sum(w in source for w in said) / len(said) if said else 0.0


def _chunk_of(answer: dict, asks: list[dict], chunks: list[str]) -> str | None:
    sent = answer["messages"][-1]["content"]
    if sent.startswith("Text:\n") and "\n\nQuestion: " in sent:  # grounded: the chunk went with the question
        return sent[len("Text:\n"):].rsplit("\n\nQuestion: ", 1)[0]
    return next((chunk for ask, chunk in zip(asks, chunks) if answer["prompt"] in ask["response"]), None)


def _documents(folder: Path, chars: int) -> Path:
    """The documents' first paragraphs, up to `chars` characters each (a small run on a shared CPU)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir(parents=True)
    for relative in DOCS:
        kept, size = [], 0
        for paragraph in re.split(r"\n\s*\n", (site / relative).read_text(encoding="utf-8")):
            if size + len(paragraph) > chars and kept:
                break
            kept.append(paragraph)
            size += len(paragraph) + 2
        (folder / relative.replace("/", "_").lstrip("._")).write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return folder


class _serve:
    """`transformers serve MODEL` on a free port of 127.0.0.1, until the block ends."""

    def __init__(self, model: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.model = model

    def __enter__(self) -> str:
        self.process = subprocess.Popen(["transformers", "serve", self.model, "--host", "127.0.0.1",
                                         "--port", str(self.port)], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
            except OSError:
                time.sleep(0.5)
                continue
            self._warm_up()
            return f"http://127.0.0.1:{self.port}/v1"
        self.process.kill()
        raise SystemExit("transformers serve did not start")

    def _warm_up(self) -> None:
        """One token, so the model is loaded before finetuner's preflight and requests."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/chat/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=600).read()

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # busy with a request the client gave up on
            self.process.kill()
            self.process.wait()


def _sets(answers: dict) -> list[str]:
    return [arg for key, value in answers.items() for arg in ("--set", f"{key}={value}")]


if __name__ == "__main__":
    main()
