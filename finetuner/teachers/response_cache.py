"""The response cache: the teacher's responses, one JSON line each, appended as they arrive.

OUTPUT_DIR/teacher_responses.jsonl (or GENERATION_CACHE/teacher_responses.jsonl, a directory shared
by many runs: one teacher pass feeds many students), one object per line:
  {"key": str,                 # sha1 of the request (kind + messages); what a rerun looks up
   "kind": "answer" | "questions",
   "prompt": str,              # the user turn the teacher answered
   "messages": [{"role", "content"}, ...],   # exactly what was sent (system prompt included)
   "response": str,
   "finish_reason": "stop" | "length" | ...,
   "teacher": {"model": str, "api_base": str | null},
   "settings": {"max_new_tokens", "temperature", "top_p", "system_prompt"},
   "usage": {"prompt_tokens": int, "completion_tokens": int}}

Each line is flushed and fsynced as it is written, so a crash, SIGKILL or Ctrl-C keeps every
response that arrived; a torn last line is skipped on reading. A rerun (or --resume) with the same
teacher and settings reuses matching lines and asks only for the rest; lines written with other
settings stay in the file but are not used. A user may edit "response" before training
(--generate-only); the key does not depend on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CACHE_FILE = "teacher_responses.jsonl"


@dataclass(frozen=True)
class Request:
    kind: str  # "answer": a response to train on; "questions": questions about a document chunk
    prompt: str
    messages: tuple[tuple[str, str], ...]  # (role, content)

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps([self.kind, self.messages]).encode()).hexdigest()

    def as_messages(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ResponseCache:
    path: Path
    teacher: dict
    settings: dict
    replies: dict[str, Reply] = field(default_factory=dict)
    added: list[Reply] = field(default_factory=list)  # the replies this process requested

    @classmethod
    def open(cls, out_dir: Path, teacher: dict, settings: dict) -> "ResponseCache":
        cache = cls(Path(out_dir) / CACHE_FILE, teacher, settings)
        cache._read()
        return cache

    def _read(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb+") as handle:  # end a torn last line so the next append starts clean
            if handle.seek(0, os.SEEK_END) and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] != b"\n":
                handle.write(b"\n")
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if not isinstance(entry, dict) or entry.get("teacher") != self.teacher \
                    or entry.get("settings") != self.settings or not isinstance(entry.get("response"), str):
                continue
            usage = entry.get("usage") or {}
            self.replies[entry["key"]] = Reply(entry["response"], str(entry.get("finish_reason")),
                                               int(usage.get("prompt_tokens", 0)),
                                               int(usage.get("completion_tokens", 0)))

    @property
    def tokens_spent(self) -> int:
        return sum(r.prompt_tokens + r.completion_tokens for r in self.replies.values())

    def missing(self, requests: list[Request]) -> list[Request]:
        seen, todo = set(self.replies), []
        for request in requests:
            if request.key not in seen:
                seen.add(request.key)
                todo.append(request)
        return todo

    def add(self, request: Request, reply: Reply) -> None:
        entry = {"key": request.key, "kind": request.kind, "prompt": request.prompt,
                 "messages": request.as_messages(), "response": reply.text,
                 "finish_reason": reply.finish_reason, "teacher": self.teacher, "settings": self.settings,
                 "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.replies[request.key] = reply
        self.added.append(reply)
