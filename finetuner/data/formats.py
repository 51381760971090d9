"""A dataset's format: which columns hold the prompt and the response (or the text), and each
row as a training example in that format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetuner.data.columns import CHAT_COLUMNS, PAIR_COLUMNS, SHAPES_HINT, TEXT_COLUMNS
from finetuner.ui import UserError

if TYPE_CHECKING:
    import datasets

# ShareGPT-style conversations say who spoke with "from"/"value" and these names.
_ROLE_NAMES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass(frozen=True)
class DataFormat:
    kind: str  # "pairs" | "chat" | "text"
    prompt_columns: tuple[str, ...]  # pairs: prompt (+ extra); chat: the messages column; text: the text column
    response_column: str | None = None  # pairs only

    def description(self) -> str:
        if self.kind == "pairs":
            return f"{' + '.join(self.prompt_columns)} → {self.response_column}"
        if self.kind == "chat":
            return f"chat conversations in '{self.prompt_columns[0]}'"
        return f"plain text in '{self.prompt_columns[0]}'"

    def needed(self) -> str:
        """What a row must hold to be usable, as a warning names it."""
        if self.kind == "pairs":
            return f"{self.prompt_columns[0]} or {self.response_column}"
        if self.kind == "chat":
            return f"conversations ending in an assistant turn ('{self.prompt_columns[0]}')"
        return f"'{self.prompt_columns[0]}'"


def detect_format(dataset: datasets.Dataset) -> DataFormat:
    """Which columns hold the prompt and the response (or the text) of each row."""
    by_lower = {name.lower(): name for name in dataset.column_names}
    for prompt, extra, response in PAIR_COLUMNS:
        if prompt in by_lower and response in by_lower:
            columns = (by_lower[prompt],) + ((by_lower[extra],) if extra in by_lower else ())
            return DataFormat("pairs", columns, by_lower[response])
    for name in CHAT_COLUMNS:
        if name in by_lower and is_conversation(_first_value(dataset, by_lower[name])):
            return DataFormat("chat", (by_lower[name],))
    strings = [name for name in dataset.column_names if _is_string_feature(dataset.features[name])]
    for name in TEXT_COLUMNS:
        if name in by_lower and by_lower[name] in strings:
            return DataFormat("text", (by_lower[name],))
    if len(strings) == 1:
        return DataFormat("text", (strings[0],))
    found = ", ".join(dataset.column_names) or "none"
    raise UserError(f"found no column to train on (columns: {found})", hint=SHAPES_HINT)


def _first_value(dataset: datasets.Dataset, column: str) -> Any:
    for value in dataset.select_columns([column]).select(range(min(20, dataset.num_rows)))[column]:
        if value:
            return value
    return None


def is_conversation(value: Any) -> bool:
    """A non-empty list of messages, each {"role", "content"} or ShareGPT's {"from", "value"}."""
    return (isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
            and all({"role", "content"} <= m.keys() or {"from", "value"} <= m.keys() for m in value))


def _is_string_feature(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _example(row: dict, fmt: DataFormat) -> dict | None:
    """A row as {"prompt", "response"} (+ "messages") or {"text"}; None when it has nothing usable."""
    if fmt.kind == "text":
        text = _clean(row[fmt.prompt_columns[0]])
        return {"text": text} if text else None
    if fmt.kind == "chat":
        return _chat_example(row[fmt.prompt_columns[0]])
    main, *extra = (_clean(row[name]) for name in fmt.prompt_columns)
    response = _clean(row[fmt.response_column])
    if not main or not response:
        return None
    return {"prompt": "\n\n".join([main] + [part for part in extra if part]), "response": response}


def _chat_example(conversation: Any) -> dict | None:
    if not is_conversation(conversation):
        return None
    messages = [{"role": _ROLE_NAMES.get(m.get("role") or m.get("from"), m.get("role") or m.get("from")),
                 "content": _clean(m.get("content", m.get("value"))) or ""} for m in conversation]
    # Train on the final assistant turn; everything before it is the prompt.
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"]), default=0)
    if last == 0:
        return None
    history = messages[:last]
    users = [m["content"] for m in history if m["role"] == "user"]
    return {"prompt": users[-1] if users else history[-1]["content"], "messages": history,
            "response": messages[last]["content"]}


def _clean(value: Any) -> str | None:
    """Cell text with surrounding whitespace removed; None for missing, NaN or non-text cells."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else str(value)
    return None


def select_examples(rows: datasets.Dataset, fmt: DataFormat, seed: int, limit: int) -> tuple[list[dict], int]:
    """Up to `limit` usable examples in a seeded random order, and how many rows were unusable.

    Stops reading once it has enough, so a large Hub dataset is not scanned to the end."""
    examples: list[dict] = []
    dropped = 0
    for row in rows.shuffle(seed=seed, keep_in_memory=True):
        example = _example(row, fmt)
        if example is None:
            dropped += 1
            continue
        examples.append(example)
        if len(examples) == limit:
            break
    return examples, dropped
