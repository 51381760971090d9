"""One cheap request to an OpenAI-compatible endpoint before any work depends on it.

`check_endpoint` asks `GET /models` (the openai client's `models.list()`); when that fails or does
not list the model, it asks for a one-token completion. It names, in one line each: a host nobody
answers on, a server that accepts the connection but does not reply within the preflight's
first-reply timeout, a base URL missing its `/v1`, a key the endpoint needs but whose variable is
unset (or a key it refuses), and a model it does not serve (listing those it does). Anything else
(a 500, an odd reply, a model slow to load) is left to the real requests, whose retries and messages
handle it. A server is called stuck only when neither request gets a reply in time.

Usable for any endpoint (a teacher, a judge): it takes the base URL, the model and the name of
the key's variable. The key is read from the environment, handed to the client only, and
redacted from anything a server echoes back.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from finetuner import ui

NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one
FIRST_REPLY_TIMEOUT = 15.0  # seconds the preflight waits for a first reply
_LISTED = 8  # served models named in a message


class EndpointError(ui.UserError):
    """An endpoint problem; `resumable` is False when rerunning with --resume would fail the same way."""

    def __init__(self, message: str, hint: str | None = None, resumable: bool = False):
        super().__init__(message, hint)
        self.resumable = resumable


def api_key(variable: str) -> str | None:
    return os.environ.get(variable) or None


def redact(text: str, key: str | None) -> str:
    """`text` without the key (or a long piece of it) a server may have echoed."""
    if not key or len(key) < 8:
        return text
    for piece in (key, key[:len(key) // 2], key[len(key) // 2:]):
        text = text.replace(piece, "***")
    return text


def check_endpoint(base: str, model: str, key_variable: str, setting: str = "teacher",
                   timeout: float = FIRST_REPLY_TIMEOUT) -> EndpointError | None:
    """None when `base` answers and serves `model`; else the problem, as one line with a hint.
    `setting` names the answers the message points at: teacher (teacher_api_base, teacher,
    teacher_api_key_env) or judge (judge_api_base, judge_model, judge_api_key_env)."""
    import openai

    names = _setting_names(setting)
    key = api_key(key_variable)
    client = openai.OpenAI(base_url=base, api_key=key or NO_KEY, max_retries=0, timeout=timeout)
    try:
        served = [m.id for m in client.models.list().data]
    except openai.APITimeoutError:  # some servers list slowly (transformers serve scans its cache): ask once more
        if not _times_out(client, model):
            return None
        return EndpointError(f"the {setting} endpoint {base} accepted the connection but did not answer GET /models "
                             f"or a one-token completion within {timeout:g} s each (the preflight's first-reply "
                             "timeout)", hint="is the server still starting, or stuck? check its log, then rerun")
    except openai.APIConnectionError as exc:
        return EndpointError(f"can't reach the {setting} endpoint {base}: {redact(cause_of(exc), key)}",
                             hint=f"check that the server is running and {names[0]} is right (it usually ends in /v1)")
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        return _key_problem(base, setting, key_variable, key, exc)
    except (openai.APIError, ValueError, TypeError, AttributeError):
        served = []  # no usable list here: a one-token completion decides
    if model in served:
        return None
    return _try_completion(client, base, model, key_variable, key, setting, served)


def _try_completion(client, base, model, key_variable, key, setting, served) -> EndpointError | None:
    import openai

    names = _setting_names(setting)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        return _key_problem(base, setting, key_variable, key, exc)
    except (openai.NotFoundError, openai.BadRequestError, openai.UnprocessableEntityError) as exc:
        if isinstance(exc, openai.NotFoundError) and (fixed := _with_v1(base, key)):
            return EndpointError(f"{base} has no OpenAI-compatible API; {fixed} has: {names[0]} is missing its /v1",
                                 hint=f"set {names[0]} to {fixed}")
        message = redact(server_message(exc), key)
        if isinstance(exc, openai.NotFoundError) or "model" in message.casefold():
            listed = f"; it serves: {', '.join(served[:_LISTED])}{' …' if len(served) > _LISTED else ''}" \
                if served else ""
            return EndpointError(f"model {model!r} is not served at {base} ({exc.status_code}: {message}){listed}",
                                 hint=f"set {names[1]} to a model the server serves")
    except openai.APIError:
        pass  # a timeout (a model still loading), a 500, an odd reply: the real requests will tell
    return None


def _times_out(client, model: str) -> bool:
    import openai

    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    except openai.APITimeoutError:
        return True
    except openai.APIError:
        pass  # it answered: the real requests will say what is wrong, if anything
    return False


def _key_problem(base, setting, key_variable, key, exc) -> EndpointError:
    status = getattr(exc, "status_code", "?")
    variable_setting = _setting_names(setting)[2]
    if key is None:
        return EndpointError(f"the {setting} endpoint {base} needs an API key ({status}), and the environment "
                             f"variable {key_variable} is not set",
                             hint=f"export {key_variable}=... (or set {variable_setting} to the variable that holds it)")
    return EndpointError(f"the {setting} endpoint {base} refused the API key in {key_variable} ({status}): "
                         f"{redact(server_message(exc), key)}",
                         hint=f"put a valid key in {key_variable} (or set {variable_setting} to the variable that holds it)")


def _with_v1(base: str, key: str | None) -> str | None:
    """`base` + /v1 when `base` lacks it and that URL lists models."""
    import openai

    if urlparse(base).path.rstrip("/").endswith("/v1"):
        return None
    fixed = base.rstrip("/") + "/v1"
    try:
        openai.OpenAI(base_url=fixed, api_key=key or NO_KEY, max_retries=0, timeout=FIRST_REPLY_TIMEOUT).models.list()
    except openai.APIError:
        return None
    return fixed


def _setting_names(setting: str) -> tuple[str, str, str]:
    if setting == "judge":
        return "judge_api_base", "judge_model", "judge_api_key_env"
    return f"{setting}_api_base", setting, f"{setting}_api_key_env"


def cause_of(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def server_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body.get("detail", body))
        text = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
    else:
        text = getattr(exc, "message", "") or str(exc)
    return (text.strip().splitlines() or [""])[0][:160]
