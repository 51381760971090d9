"""How a prompt and its response look as text for a given tokenizer.

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
