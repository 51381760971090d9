"""A teacher behind an OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, `transformers serve`,
hosted APIs), through the official `openai` client.

Requests run concurrently up to `generation_concurrency`. The client itself retries 429 (honouring
Retry-After), 5xx, timeouts and dropped connections with exponential backoff; what still fails
becomes one UserError naming the cause. The API key is read from the environment variable named by
`teacher_api_key_env` and handed to the client only: never printed, logged or written.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Callable

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.teachers.response_cache import Reply, Request

NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one


class MalformedReply(Exception):
    """A reply that parsed but is not a chat completion."""


class ApiTeacher:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.identity = {"model": cfg.teacher, "api_base": cfg.teacher_api_base}

    def _client(self):
        from openai import AsyncOpenAI

        key = os.environ.get(self.cfg.teacher_api_key_env) or NO_KEY
        return AsyncOpenAI(base_url=self.cfg.teacher_api_base, api_key=key, max_retries=self.cfg.generation_max_retries,
                           timeout=self.cfg.generation_timeout)

    def generate(self, requests: list[Request], on_reply: Callable[[Request, Reply], None],
                 stop: Callable[[], bool]) -> None:
        """Answer `requests`, calling on_reply as each arrives; issue no new request once stop() is true."""
        try:
            asyncio.run(self._generate(requests, on_reply, stop))
        except BaseExceptionGroup as group:  # TaskGroup: the first failure cancelled the rest
            raise self._user_error(_first(group)) from None
        except Exception as exc:
            raise self._user_error(exc) from None

    async def _generate(self, requests, on_reply, stop) -> None:
        client = self._client()
        limit = asyncio.Semaphore(self.cfg.generation_concurrency)

        async def one(request: Request) -> None:
            async with limit:
                if stop():
                    return
                on_reply(request, await self._ask(client, request))

        try:
            async with asyncio.TaskGroup() as group:
                for request in requests:
                    group.create_task(one(request))
        finally:
            await client.close()

    async def _ask(self, client, request: Request) -> Reply:
        cfg = self.cfg
        completion = await client.chat.completions.create(
            model=cfg.teacher, messages=request.as_messages(), max_tokens=cfg.generation_max_new_tokens,
            temperature=cfg.generation_temperature, top_p=cfg.generation_top_p)
        return parse_completion(completion)

    def _user_error(self, exc: BaseException) -> BaseException:
        """One line a user can act on; anything unrecognised stays a bug with its traceback."""
        import openai

        cfg, base = self.cfg, self.cfg.teacher_api_base
        retried = f"after {cfg.generation_max_retries + 1} attempts"
        if isinstance(exc, ui.UserError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return ui.UserError(f"the teacher at {base} did not answer within {cfg.generation_timeout:g} s "
                                f"({retried})", hint="raise generation_timeout, or lower generation_concurrency")
        if isinstance(exc, openai.APIConnectionError):
            return ui.UserError(f"can't reach the teacher endpoint {base} ({retried}): {_cause(exc)}",
                                hint="check that the server is running and teacher_api_base is right "
                                     "(it usually ends in /v1)")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return ui.UserError(f"the teacher endpoint {base} refused the API key ({exc.status_code})",
                                hint=f"put a valid key in the environment variable {cfg.teacher_api_key_env} "
                                     "(or set teacher_api_key_env to the variable that holds it)")
        if isinstance(exc, openai.NotFoundError):
            return ui.UserError(f"model {cfg.teacher!r} is not served at {base} (404)",
                                hint=f"the served models are listed at {base.rstrip('/')}/models; set teacher "
                                     "to one of them")
        if isinstance(exc, openai.RateLimitError):
            return ui.UserError(f"the teacher endpoint {base} is still rate-limiting (429) {retried}",
                                hint="lower generation_concurrency, or wait and rerun with --resume")
        if isinstance(exc, openai.APIStatusError):
            return ui.UserError(f"the teacher endpoint {base} answered {exc.status_code} {retried}: "
                                f"{_server_message(exc)}",
                                hint="check the server's log; rerun with --resume once it answers again")
        if isinstance(exc, (MalformedReply, openai.APIResponseValidationError, json.JSONDecodeError)):
            return ui.UserError(f"the teacher endpoint {base} sent a reply that is not a chat completion: "
                                f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}",
                                hint="is teacher_api_base an OpenAI-compatible /v1 endpoint?")
        return exc


def parse_completion(completion) -> Reply:
    """The text, finish reason and token counts of a chat completion, or MalformedReply."""
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("no choices in the reply")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if text is not None and not isinstance(text, str):
        raise MalformedReply("the reply's message content is not text")
    usage = getattr(completion, "usage", None)
    return Reply(text or "", str(getattr(choices[0], "finish_reason", None) or "stop"),
                 int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0))


def _first(group: BaseExceptionGroup) -> BaseException:
    exc = group.exceptions[0]
    return _first(exc) if isinstance(exc, BaseExceptionGroup) else exc


def _cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def _server_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body.get("detail", body))
        text = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
    else:
        text = getattr(exc, "message", "") or str(exc)
    return (text.strip().splitlines() or [""])[0][:160]
