"""A small OpenAI-compatible judge on 127.0.0.1 that grades deterministically, and counts.

It reads the REFERENCE and ANSWER sections of the rubric prompt it is sent: 5 when the answer holds
the reference's final number (after ####), else 1. The model name picks the behaviour:
  grader      grades as above
  flaky       500 on each answer's first attempt, then grades
  offrubric   replies without a score ("Looks fine to me.")
  missing     404
Any request whose Authorization is not "Bearer <key>" gets 401 when a key is set (TeacherServer).
"""

from __future__ import annotations

import re

from teacher_server import TeacherServer, _send


class JudgeServer(TeacherServer):
    def handle(self, handler, body: dict) -> None:
        model, prompt, first, _ = self.record(handler, body)
        if self.key is not None and handler.headers.get("Authorization") != f"Bearer {self.key}":
            return _send(handler, 401, {"error": {"message": "Incorrect API key provided"}})
        if model == "missing":
            return _send(handler, 404, {"error": {"message": f"The model {model!r} does not exist"}})
        if model == "flaky" and first:
            return _send(handler, 500, {"error": {"message": "boom"}}, {"retry-after-ms": "20"})
        reply = "Looks fine to me." if model == "offrubric" else grade(prompt)
        _send(handler, 200, {
            "id": "chatcmpl-j", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


def grade(prompt: str) -> str:
    reference = prompt.split("REFERENCE:\n", 1)[1].split("\n\nANSWER:", 1)[0]
    answer = prompt.split("ANSWER:\n", 1)[1].split("\n\nReply with", 1)[0]
    wanted = reference.split("####")[-1].strip()
    right = wanted in re.findall(r"-?\d+", answer)
    return f"Score: {5 if right else 1}\nReason: the final answer is {'right' if right else 'wrong'}."
