"""How a prompt and its response look, as text and as token ids, for a given tokenizer.

Training and the benchmark both go through here, so the model is always asked
questions in exactly the shape it was trained on.
"""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str) -> str:
    """The text a model sees before it starts answering."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{prompt}\n"


def render_messages_prompt(tokenizer, messages: list[dict]) -> str:
    """A chat history (all but the final assistant turn) ready for the assistant's answer."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def response_suffix(tokenizer) -> str:
    """What ends a response: the EOS token, so the model learns to stop."""
    return tokenizer.eos_token or ""


def encode_prompt(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts, exactly as training sees them (the benchmark should use this too).

    A chat template writes any BOS itself, so nothing is added; without one, the tokenizer's own
    leading special tokens (a Llama BOS) are added, as `tokenizer(text)` would."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    if has_chat_template(tokenizer):
        return ids
    prefix = leading_special_ids(tokenizer)
    return [prefix + row for row in ids]


def leading_special_ids(tokenizer) -> list[int]:
    """The special tokens a tokenizer puts before any text by itself (a Llama BOS), found by encoding "a"."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def plain_chat_template(tokenizer, chat: bool = False) -> str:
    """A chat template that writes exactly what `render_prompt` / `render_messages_prompt` write for
    a tokenizer without one (and the leading BOS `encode_prompt` adds), so the saved model is
    asked in the format it was trained on by `apply_chat_template`, chat UIs and the Hub.

    `chat`: the model trained on conversations (`messages`), whose every prompt, a single user turn
    included, was written `role: content` lines then `assistant: `; else it trained on prompts
    written as the prompt and a newline, which a single user turn renders as."""
    bos = "{{ bos_token }}" if leading_special_ids(tokenizer) else ""
    newline = "{{ '\\n' }}"
    turns = (f"{{%- for m in messages -%}}{{{{ m['role'] }}}}: {{{{ m['content'] }}}}{newline}{{%- endfor -%}}"
             "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}")
    if chat:
        return bos + turns
    return (
        f"{bos}{{%- if messages | length == 1 and messages[0]['role'] == 'user' and add_generation_prompt -%}}"
        f"{{{{ messages[0]['content'] }}}}{newline}"
        f"{{%- else -%}}{turns}{{%- endif -%}}"
    )


def save_prompt_format(tokenizer, chat: bool = False) -> None:
    """Give a tokenizer without a chat template the one training used (before saving it); `chat`:
    the training rows were conversations (see `plain_chat_template`)."""
    if not has_chat_template(tokenizer):
        tokenizer.chat_template = plain_chat_template(tokenizer, chat)
