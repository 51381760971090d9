"""A small OpenAI-compatible chat server on 127.0.0.1 that misbehaves on demand, and counts.

The model name in a request picks the behaviour:
  ok            answers "The answer to <prompt>" (stop), with usage; asked for questions about a
                document chunk, writes three numbered questions
  ratelimit     429 with Retry-After: 1 on a prompt's first attempt, then ok
  error500      500 always (retry-after-ms 20, so the client's retries are quick)
  slow          sleeps past the client's timeout on a prompt's first attempt, then ok
  malformed     200 with a body that is not JSON
  dropped       closes the connection without a reply on a prompt's first attempt, then ok
  truncated     answers with finish_reason "length"
  plain         like ok, but rejects response_format (400), as servers without structured output do
Asked for questions about a chunk, ok and plain reply as a chatty API model does: a preamble, numbered
and bold questions, a "Question N:" label, a heading and a code block; with response_format, ok
replies with the JSON object the schema asks for. Asked to answer from a text (a system prompt and
"Text: ... Question: ..."), they quote the sentence the question asks about. A prompt containing "please refuse"
gets a refusal, "please echo" its own prompt back, "please repeat" the same long answer each time.
GET /v1/models lists the models above. Only paths under /v1 exist (a base URL without /v1 gets 404).
With die_after=N, the server answers N requests, then drops every connection (dying mid-run).
Any request whose Authorization is not "Bearer <key>" gets 401 (echoing the key sent, as some
servers do) when a key is set.
Run as a script (`python teacher_server.py PORT [DELAY_S]`) for a separate process.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up mid-reply (timeouts) is part of the game


class TeacherServer:
    def __init__(self, key: str | None = None, delay: float = 0.0, port: int = 0, die_after: int | None = None):
        self.key = key
        self.die_after = die_after
        self.delay = delay
        self.attempts: Counter = Counter()  # (model, prompt) -> requests seen
        self.requests: list[dict] = []  # every request body, in arrival order
        self.headers: list[dict] = []
        self.gets: list[str] = []  # GET paths (the preflight's /models)
        self.reject_top_p = False  # True: a top_p other than 1 gets 400, as a server with fewer knobs answers
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.path.startswith("/v1/"):
                    return _send(self, 404, {"detail": "Not Found"})
                server.handle(self, body)

            def do_GET(self):
                server.gets.append(self.path)
                if not self.path.startswith("/v1/models"):
                    return _send(self, 404, {"detail": "Not Found"})
                if server.unauthorized(self):
                    return
                _send(self, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in SERVED]})

        self.httpd = _QuietServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "TeacherServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def unauthorized(self, handler) -> bool:
        sent = handler.headers.get("Authorization", "")
        if self.key is None or sent == f"Bearer {self.key}":
            return False
        _send(handler, 401, {"error": {"message": f"Incorrect API key provided: {sent.removeprefix('Bearer ')}",
                                       "type": "invalid_request_error"}})
        return True

    def prompts(self) -> list[str]:
        return [b["messages"][-1]["content"] for b in self.requests]

    def record(self, handler, body: dict) -> tuple[str, str, bool, int]:
        """Count a request: (model, last message, whether it is that pair's first attempt, requests so far)."""
        model = body.get("model", "")
        prompt = body.get("messages", [{}])[-1].get("content", "")
        with self.lock:
            self.attempts[(model, prompt)] += 1
            self.requests.append(body)
            self.headers.append(dict(handler.headers))
            return model, prompt, self.attempts[(model, prompt)] == 1, len(self.requests)

    def handle(self, handler, body: dict) -> None:
        model, prompt, first, served = self.record(handler, body)
        if self.unauthorized(handler):
            return
        if self.delay:
            time.sleep(self.delay)
        if model == "ratelimit" and first:
            return _send(handler, 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
        if model == "error500":
            return _send(handler, 500, {"error": {"message": "boom"}}, {"retry-after-ms": "20"})
        if model == "slow" and first:
            time.sleep(1.5)
        if model == "malformed":
            return _send_raw(handler, 200, b'{"id": "x", "choices": [ this is not json')
        if (model == "dropped" and first) or (self.die_after is not None and served > self.die_after):
            handler.close_connection = True
            handler.connection.close()
            return
        if model not in SERVED:
            return _send(handler, 404, {"error": {"message": f"The model {model!r} does not exist"}})
        if model == "plain" and "response_format" in body:
            return _send(handler, 400, {"error": {"message": "response_format is not supported"}})
        if self.reject_top_p and body.get("top_p", 1) != 1:
            return _send(handler, 400, {"error": {"message": "top_p is not supported"}})
        finish = "length" if model == "truncated" else "stop"
        text = _reply(body, prompt)
        _send(handler, 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


SERVED = ("ok", "ratelimit", "error500", "slow", "malformed", "dropped", "truncated", "plain")


def _reply(body: dict, prompt: str) -> str:
    """What a realistic chat model writes for a request."""
    if "questions that the text below answers" in prompt:  # questions from documents
        topic = [_topic(sentence) for sentence in _sentences(prompt.split("Text:\n", 1)[-1])] * 3
        if "response_format" in body:
            return json.dumps({"questions": [f"What does the text say about {t}?" for t in topic[:3]]})
        return (f"Here are three questions that the text answers:\n\n## Questions\n\n"
                f"1. **What does the text say about {topic[0]}?**\n"
                f"**Question 2:** How is {topic[1]} described in the text?\n"
                f"```python\nprint('What is this?')\n```\n"
                f"3) Why does the text mention {topic[2]}?\n"
                f"4. What does the text say about {topic[0]}?\n\nI hope these help!")
    if "please refuse" in prompt:
        return "I'm sorry, but as an AI language model I can't help with that."
    if "please echo" in prompt:
        return prompt
    if "please repeat" in prompt:
        return "This is the same long answer, written word for word for every prompt that asks for it."
    if body["messages"][0]["role"] == "system" and "\n\nQuestion: " in prompt:  # answer from the text
        text, question = prompt.split("Text:\n", 1)[-1].split("\n\nQuestion: ", 1)
        return "According to the text, " + next((s for s in _sentences(text) if _topic(s) in question),
                                                _sentences(text)[0])
    return f"The answer to {prompt}"


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _topic(sentence: str) -> str:
    """The word a question about this sentence asks after: its first word of more than three letters."""
    return next((w for w in re.findall(r"[A-Za-z]+", sentence) if len(w) > 3), "it")


def _send(handler, status: int, payload: dict, headers: dict | None = None) -> None:
    _send_raw(handler, status, json.dumps(payload).encode(), headers)


def _send_raw(handler, status: int, data: bytes, headers: dict | None = None) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up (timeout) first


if __name__ == "__main__":  # a separate process: python teacher_server.py PORT DELAY_S LOG_FILE
    server = TeacherServer(delay=float(sys.argv[2]), port=int(sys.argv[1]))
    original = server.handle

    def logged(handler, body):
        with open(sys.argv[3], "a") as log:  # one JSON line per request, before answering
            log.write(json.dumps(body["messages"][-1]["content"]) + "\n")
        original(handler, body)

    server.handle = logged
    print("ready", flush=True)
    server.httpd.serve_forever()
