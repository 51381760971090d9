"""Questions from documents: split .txt/.md files into chunks by tokens, and ask the teacher for
questions about each chunk (the answers are then written like any other response)."""

from __future__ import annotations

import re
from pathlib import Path

from finetuner import ui
from finetuner.sources import document_files

QUESTION_PROMPT = ("Write {n} different questions that the text below answers. Each question must make "
                   "sense on its own, without the text. Write one question per line, with no numbering "
                   "and nothing else.\n\nText:\n{chunk}")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|Q\d*[:.)])\s*", re.IGNORECASE)


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


def parse_questions(text: str, limit: int) -> list[str]:
    """The questions in a teacher's reply: one per line, list marks removed, at most `limit`."""
    questions = []
    for line in text.splitlines():
        line = _LIST_MARK.sub("", line).strip().strip('"').strip()
        if len(line) > 8 and line not in questions:
            questions.append(line)
    return questions[:limit]
