"""The column names finetuner recognises in a dataset's rows.

A leaf module: `sources` judges a file from its first line with these names without loading
the data pipeline, and `formats` detects a dataset's format from them.
"""

from __future__ import annotations

# (prompt column, optional extra prompt column, response column), most specific first.
# The extra column (Alpaca's "input", Dolly's "context") joins the prompt when it is non-empty.
PAIR_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("question", None, "answer"),
    ("instruction", "input", "output"),
    ("instruction", "context", "response"),
    ("prompt", None, "completion"),
    ("prompt", None, "response"),
    ("input", None, "output"),
)
CHAT_COLUMNS = ("messages", "conversations")
TEXT_COLUMNS = ("text", "content")
# What a user is told when no column fits: the shapes above, in words.
SHAPES_HINT = ("use question/answer, instruction(+input)/output, prompt/completion, prompt/response or "
               "input/output columns, a chat 'messages' column, or a 'text' column")
