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
With die_after=N, the server answers N requests, then drops every connection (dying mid-run).
Any request whose Authorization is not "Bearer <key>" gets 401 when a key is set.
Run as a script (`python teacher_server.py PORT [DELAY_S]`) for a separate process.
"""

from __future__ import annotations

import json
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
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.handle(self, body)

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

    def prompts(self) -> list[str]:
        return [b["messages"][-1]["content"] for b in self.requests]

    def handle(self, handler, body: dict) -> None:
        model = body.get("model", "")
        prompt = body.get("messages", [{}])[-1].get("content", "")
        with self.lock:
            self.attempts[(model, prompt)] += 1
            first = self.attempts[(model, prompt)] == 1
            self.requests.append(body)
            self.headers.append(dict(handler.headers))
            served = len(self.requests)
        if self.key is not None and handler.headers.get("Authorization") != f"Bearer {self.key}":
            return _send(handler, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
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
        if model in ("", "missing"):
            return _send(handler, 404, {"error": {"message": f"The model {model!r} does not exist"}})
        finish = "length" if model == "truncated" else "stop"
        text = f"The answer to {prompt}"
        if "questions that the text below answers" in prompt:  # questions from documents
            chunk = prompt.split("Text:\n", 1)[-1]
            text = "\n".join(f"{i}. What does the text say about {chunk.split()[i % len(chunk.split())]}?"
                              for i in range(1, 4))
        _send(handler, 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


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
