"""A teacher behind an OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, `transformers serve`,
hosted APIs), through the official `openai` client.

Requests run concurrently up to `generation_concurrency`. The client itself retries 429 (honouring
Retry-After), 5xx, timeouts and dropped connections with exponential backoff; what still fails
becomes one UserError naming the cause (a status the client does not retry, like 400, is not said to
have been retried, nor offered --resume). The API key is read from the environment variable named by
`teacher_api_key_env` and handed to the client only: never printed, logged or written, and redacted
from any server message shown.

Questions about a document chunk are asked with structured output (`response_format`, a JSON
schema); a server that rejects it (400/422) is asked again without, for the rest of the run.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from finetuner import ui
from finetuner.config import RunConfig
from finetuner.teachers.preflight import NO_KEY, EndpointError, cause_of, server_message, api_key, redact
from finetuner.teachers.questions import RESPONSE_FORMAT
from finetuner.teachers.response_cache import Reply, Request

_RETRIED = (408, 409, 429)  # and 5xx: the statuses the openai client retries


class MalformedReply(Exception):
    """A reply that parsed but is not a chat completion."""


class ApiTeacher:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.identity = {"model": cfg.teacher, "api_base": cfg.teacher_api_base}
        self.key_variable = cfg.teacher_api_key_env
        self.structured = True  # until the server rejects response_format

    def _client(self):
        from openai import AsyncOpenAI

        key = api_key(self.key_variable) or NO_KEY
        return AsyncOpenAI(base_url=self.identity["api_base"], api_key=key, max_retries=self.cfg.generation_max_retries,
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
        import openai

        cfg = self.cfg
        ask = dict(model=cfg.teacher, messages=request.as_messages(), max_tokens=cfg.generation_max_new_tokens,
                   temperature=cfg.generation_temperature, top_p=cfg.generation_top_p)
        if request.kind == "questions" and self.structured:
            try:
                return parse_completion(await client.chat.completions.create(**ask, response_format=RESPONSE_FORMAT))
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                self.structured = False  # this server has no structured output: plain text, strictly parsed
        return parse_completion(await client.chat.completions.create(**ask))

    def _user_error(self, exc: BaseException) -> BaseException:
        """One line a user can act on; anything unrecognised stays a bug with its traceback."""
        import openai

        cfg, base = self.cfg, self.cfg.teacher_api_base
        key = api_key(cfg.teacher_api_key_env)
        retried = f" after {cfg.generation_max_retries + 1} attempts"
        if isinstance(exc, ui.UserError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return EndpointError(f"the teacher at {base} did not answer within {cfg.generation_timeout:g} s{retried}",
                                 hint="raise generation_timeout, or lower generation_concurrency", resumable=True)
        if isinstance(exc, openai.APIConnectionError):
            return EndpointError(f"can't reach the teacher endpoint {base}{retried}: {redact(cause_of(exc), key)}",
                                 hint="check that the server is running and teacher_api_base is right "
                                      "(it usually ends in /v1)", resumable=True)
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return EndpointError(f"the teacher endpoint {base} refused the API key ({exc.status_code})",
                                 hint=f"put a valid key in the environment variable {cfg.teacher_api_key_env} "
                                      "(or set teacher_api_key_env to the variable that holds it)")
        if isinstance(exc, openai.NotFoundError):
            return EndpointError(f"model {cfg.teacher!r} is not served at {base} (404)",
                                 hint=f"the served models are listed at {base.rstrip('/')}/models; set teacher "
                                      "to one of them")
        if isinstance(exc, openai.APIStatusError):
            return _status_error(exc, base, retried, key)
        if isinstance(exc, (MalformedReply, openai.APIResponseValidationError, json.JSONDecodeError)):
            return EndpointError(f"the teacher endpoint {base} sent a reply that is not a chat completion: "
                                 f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}",
                                 hint="is teacher_api_base an OpenAI-compatible /v1 endpoint?")
        return exc


def _status_error(exc, base: str, retried: str, key: str | None) -> EndpointError:
    """A status the client retried (429, 5xx: a rerun may succeed) or did not (400: it will not)."""
    message = redact(server_message(exc), key)
    if exc.status_code == 429:
        return EndpointError(f"the teacher endpoint {base} is still rate-limiting (429){retried}",
                             hint="lower generation_concurrency, or wait and rerun with --resume", resumable=True)
    if exc.status_code in _RETRIED or exc.status_code >= 500:
        return EndpointError(f"the teacher endpoint {base} answered {exc.status_code}{retried}: {message}",
                             hint="check the server's log; rerun with --resume once it answers again", resumable=True)
    return EndpointError(f"the teacher endpoint {base} refused a request ({exc.status_code}): {message}",
                         hint="check teacher and the generation_* settings against what the server accepts")


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
