"""Questions from documents: split .txt/.md files into chunks by tokens; the teacher writes
questions about each chunk (teachers/questions.py), then answers each one from its chunk.

The answer request carries the chunk and a system prompt asking for an answer from the text alone
(grounded, not from memory); the student is then trained on question -> answer without the chunk,
which is what it has to learn. A question the text does not answer gets NOT_IN_TEXT, which the
refusals filter drops."""

from __future__ import annotations

import re
from pathlib import Path

from finetuner import ui
from finetuner.sources import document_files

from finetuner.teachers.response_cache import Request

NOT_IN_TEXT = "NOT IN THE TEXT"
GROUNDED_SYSTEM = ("Answer the question from the text the user gives, and from nothing else. Quote or "
                   "closely paraphrase the text, in a complete answer that makes sense without the text. If "
                   f"the text does not answer the question, reply exactly: {NOT_IN_TEXT}")
GROUNDED_PROMPT = "Text:\n{chunk}\n\nQuestion: {question}"


def read_documents(dataset: str) -> list[tuple[Path, str]]:
    paths = document_files(Path(dataset).expanduser())
    documents = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise ui.UserError(f"{path} is not UTF-8 text",
                               hint=f"re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name}") from None
        if text:
            documents.append((path, text))
    if not documents:
        raise ui.UserError(f"{dataset} holds no text to write questions from",
                           hint="give a .txt or .md file, or a folder of them, with some text in it")
    return documents


def read_chunks(dataset: str, tokenizer, chunk_tokens: int) -> list[tuple[str, str]]:
    """(source, chunk) for every chunk of every document; source is "FILE#N", N counting from 1."""
    return [(f"{path.name}#{n}", chunk) for path, text in read_documents(dataset)
            for n, chunk in enumerate(chunk_text(text, tokenizer, chunk_tokens), 1)]


def chunk_text(text: str, tokenizer, chunk_tokens: int) -> list[str]:
    """Consecutive pieces of about `chunk_tokens` tokens, cut at paragraph breaks where possible."""
    chunks, current, size = [], [], 0
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        ids = tokenizer(paragraph, add_special_tokens=False)["input_ids"]
        if size and size + len(ids) > chunk_tokens:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        if len(ids) > chunk_tokens:  # one long paragraph: cut it by tokens
            for start in range(0, len(ids), chunk_tokens):
                chunks.append(tokenizer.decode(ids[start:start + chunk_tokens]).strip())
            continue
        current.append(paragraph)
        size += len(ids)
    if current:
        chunks.append("\n\n".join(current))
    return [c for c in chunks if c]


def grounded_request(question: str, chunk: str, system_prompt: str | None = None) -> Request:
    """Ask for an answer to `question` from `chunk`; the request's prompt (what the student sees) is
    the question alone."""
    system = f"{system_prompt}\n\n{GROUNDED_SYSTEM}" if system_prompt else GROUNDED_SYSTEM
    return Request("answer", question, (("system", system),
                                        ("user", GROUNDED_PROMPT.format(chunk=chunk, question=question))))
