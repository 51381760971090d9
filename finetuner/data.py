"""Training data: load rows, detect their shape, tokenize with response-only labels, split.

One path for every source: a built-in, a local file or a Hub id becomes a `datasets.Dataset`
of raw rows; `detect_format` decides which columns hold the prompt and the response; `prepare`
renders each row exactly as the benchmark will (through `formatting`), tokenizes it and holds
part of it out. Bad data becomes a `UserError` that names the file and, where it can, the line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from finetuner import ui
from finetuner.formatting import has_chat_template, render_messages_prompt, render_prompt, response_suffix
from finetuner.sources import builtin_dataset_file, data_files_in, dataset_kind
from finetuner.ui import UserError

if TYPE_CHECKING:
    import datasets

    from finetuner.config import RunConfig

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
# ShareGPT-style conversations say who spoke with "from"/"value" and these names.
_ROLE_NAMES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text", ".parquet": "parquet"}
_SHAPES_HINT = ("use question/answer, instruction(+input)/output, prompt/completion, prompt/response or "
                "input/output columns, a chat 'messages' column, or a 'text' column")


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


@dataclass
class PreparedData:
    train: "datasets.Dataset"  # input_ids, attention_mask, labels; not padded
    eval: "datasets.Dataset"  # the held-out rows, tokenized the same way
    heldout: list[dict]  # {"prompt", "reference"} (+ "messages" for chat); [] for plain text
    format: DataFormat
    stats: dict[str, int] = field(default_factory=dict)


# ---- loading --------------------------------------------------------------------------------

def load_rows(cfg: RunConfig, dataset: str | None = None) -> datasets.Dataset:
    """The raw rows of the configured dataset (or of `dataset`), whatever it is."""
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars; finetuner reports what it loaded
    name = dataset or cfg.dataset
    kind = dataset_kind(name)
    if kind == "builtin":
        return _load_file(builtin_dataset_file(name))
    if kind == "local":
        path = Path(name).expanduser()
        return _load_folder(path) if path.is_dir() else _load_file(path)
    return _load_hub(name, cfg.dataset_config, cfg.dataset_split, cfg.dataset_files)


def _load_folder(folder: Path) -> datasets.Dataset:
    """A folder of data files of one type (a dataset's shards), read as one dataset."""
    import datasets

    try:
        files = data_files_in(folder)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    parts = [_load_file(path) for path in files]  # each file checked and explained on its own
    ui.info(f"Reading {len(files)} {files[0].suffix} files from {folder}")
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _load_file(path: Path) -> datasets.Dataset:
    import datasets

    if not path.is_file():
        raise UserError(f"no such file: {path}", hint="check the path, or pass a Hub dataset id")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"unsupported file type {path.suffix or '(none)'!r}: {path}",
                        hint=f"use one of {', '.join(_BUILDERS)}")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty", hint="it needs at least one row of data")
    if builder != "parquet":
        _check_utf8(path)
    try:
        options = {"features": _csv_string_features(path)} if builder == "csv" else {}
        with _reader_errors_unlogged():
            rows = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # every reader fails differently; _unreadable says why in the user's terms
        raise _unreadable(path, err) from err
    if path.suffix.lower() == ".json" and (wrapper := _wrapping_field(path, rows)):
        ui.info(f"Reading the records in the '{wrapper}' field of {path.name}")
        rows = datasets.load_dataset("json", data_files=str(path), field=wrapper, split="train")
    if rows.num_rows == 0:
        raise UserError(f"{path} has no rows", hint="it needs at least one row of data")
    return rows


@contextlib.contextmanager
def _reader_errors_unlogged():
    """datasets' JSON reader logs its own error line (an Arrow message) before raising; the user
    should read only ours, which names the line."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _csv_string_features(path: Path) -> datasets.Features:
    """Read every CSV column as text: pandas would turn an int column with a gap into floats ("4.0")."""
    import datasets

    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def _wrapping_field(path: Path, rows: datasets.Dataset) -> str | None:
    """The list field of a JSON document like {"data": [{...}, ...]}, read as a single row."""
    if rows.num_rows != 1 or not _first_char_is(path, "{"):  # an array of one record is just that
        return None
    first = rows[0]
    lists = [name for name, value in first.items()
             if isinstance(value, list) and value and all(isinstance(v, dict) for v in value)]
    if len(lists) != 1 or _is_conversation(first[lists[0]]):
        return None
    return lists[0]


def _first_char_is(path: Path, char: str) -> bool:
    with path.open(encoding="utf-8") as handle:
        return handle.read(4096).lstrip().startswith(char)


def _unreadable(path: Path, err: Exception) -> UserError:
    """Why `path` could not be read, found by looking at the file ourselves."""
    if path.suffix.lower() == ".parquet":
        return UserError(f"could not read {path} as Parquet: {_root_message(err)}",
                         hint="check that the file is a complete Parquet file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return UserError(f"{path} is empty", hint="it needs at least one row of data")
    if path.suffix.lower() in (".json", ".jsonl") and (problem := _json_problem(text)):
        hint = ("each line of a .jsonl file must be one JSON object" if path.suffix.lower() == ".jsonl"
                else "a .json file holds an array of records, or one JSON object per line")
        return UserError(f"{path}: {problem}", hint=hint)
    if path.suffix.lower() == ".csv":
        if len([ln for ln in text.splitlines() if ln.strip()]) == 1:
            return UserError(f"{path} has a header but no rows", hint="it needs at least one row of data")
        return UserError(f"could not read {path} as CSV: {_root_message(err)}",
                         hint="a value holding a comma or a line break must be in double quotes")
    return UserError(f"could not read {path}: {_root_message(err)}", details=[f"{type(err).__name__}: {err}"])


def _check_utf8(path: Path) -> None:
    """Fail on non-UTF-8 text up front: the JSON reader accepts it and breaks later, mid-training."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                _not_utf8(path, lines_before + chunk[:max(err.start, 0)].count(b"\n") + 1)
            lines_before += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        _not_utf8(path, lines_before + 1)


def _not_utf8(path: Path, line: int) -> None:
    raise UserError(f"{path} is not UTF-8 text (line {line} has bytes UTF-8 does not allow)",
                    hint=f"re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}")


def _json_problem(text: str) -> str | None:
    """Where a JSON or JSON Lines document stops being valid JSON."""
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if _parses(first) and len([ln for ln in lines if ln.strip()]) > 1:
        for number, line in enumerate(lines, start=1):  # JSON Lines: one document per line
            if line.strip() and not _parses(line):
                return f"line {number} is not valid JSON: {line.strip()[:60]}"
        return None
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return f"line {err.lineno} is not valid JSON ({err.msg})"
    return None


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _root_message(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _load_hub(name: str, config: str | None, split: str, files: str | None) -> datasets.Dataset:
    import datasets
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError
    from huggingface_hub.errors import OfflineModeIsEnabled

    data_files = [f.strip() for f in files.split(",") if f.strip()] if files else None
    try:
        return datasets.load_dataset(name, config, split=split, data_files=data_files)
    except DataFilesNotFoundError as err:
        raise UserError(f"no files in Hub dataset {name} match {files!r}",
                        hint="check dataset_files against the files listed on the dataset's page") from err
    except DatasetNotFoundError as err:
        raise UserError(f"dataset {name!r} was not found on the Hugging Face Hub",
                        hint="check the id (owner/name); private or gated datasets need `hf auth login`") from err
    except (ConnectionError, OfflineModeIsEnabled) as err:
        raise UserError(f"could not reach the Hugging Face Hub to load dataset {name} (offline?)",
                        hint="download it while online, or pass a local .jsonl/.csv/.parquet file") from err
    except ValueError as err:  # an unknown split or config; datasets lists the valid ones
        raise UserError(f"could not load {split!r} of Hub dataset {name}: {_root_message(err)}",
                        hint="check dataset_config and dataset_split") from err


# ---- detecting the format -------------------------------------------------------------------

def detect_format(dataset: datasets.Dataset) -> DataFormat:
    """Which columns hold the prompt and the response (or the text) of each row."""
    by_lower = {name.lower(): name for name in dataset.column_names}
    for prompt, extra, response in PAIR_COLUMNS:
        if prompt in by_lower and response in by_lower:
            columns = (by_lower[prompt],) + ((by_lower[extra],) if extra in by_lower else ())
            return DataFormat("pairs", columns, by_lower[response])
    for name in CHAT_COLUMNS:
        if name in by_lower and _is_conversation(_first_value(dataset, by_lower[name])):
            return DataFormat("chat", (by_lower[name],))
    strings = [name for name in dataset.column_names if _is_string_feature(dataset.features[name])]
    for name in TEXT_COLUMNS:
        if name in by_lower and by_lower[name] in strings:
            return DataFormat("text", (by_lower[name],))
    if len(strings) == 1:
        return DataFormat("text", (strings[0],))
    found = ", ".join(dataset.column_names) or "none"
    raise UserError(f"found no column to train on (columns: {found})", hint=_SHAPES_HINT)


def _first_value(dataset: datasets.Dataset, column: str) -> Any:
    for value in dataset.select_columns([column]).select(range(min(20, dataset.num_rows)))[column]:
        if value:
            return value
    return None


def _is_conversation(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)
            and all({"role", "content"} <= m.keys() or {"from", "value"} <= m.keys() for m in value))


def _is_string_feature(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


# ---- rows to examples -----------------------------------------------------------------------

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
    if not _is_conversation(conversation):
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


def _select(rows: datasets.Dataset, fmt: DataFormat, seed: int, limit: int) -> tuple[list[dict], int]:
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


# ---- tokenizing -----------------------------------------------------------------------------

def encode_prompt(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts, exactly as training sees them (the benchmark should use this too).

    A chat template writes any BOS itself, so nothing is added; without one, the tokenizer's own
    leading special tokens (a Llama BOS) are added, as `tokenizer(text)` would."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    if has_chat_template(tokenizer):
        return ids
    prefix = _leading_special_ids(tokenizer)
    return [prefix + row for row in ids]


def _leading_special_ids(tokenizer) -> list[int]:
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _tokenize(examples: list[dict], plain_text: bool, tokenizer, max_length: int) -> tuple[list[dict], dict[str, int]]:
    """Examples as {"input_ids", "labels", "example", "cut"}; rows whose prompt fills max_length are dropped."""
    suffix = response_suffix(tokenizer)
    if plain_text:
        prompt_ids = [[] for _ in examples]
        response_ids = encode_prompt(tokenizer, [ex["text"] + suffix for ex in examples])
    else:
        rendered = [render_messages_prompt(tokenizer, ex["messages"]) if "messages" in ex
                    else render_prompt(tokenizer, ex["prompt"]) for ex in examples]
        prompt_ids = encode_prompt(tokenizer, rendered)
        # Tokenized apart from the prompt, so the prompt's ids are exactly what generation starts from.
        response_ids = tokenizer([ex["response"] + suffix for ex in examples], add_special_tokens=False)["input_ids"]
    encoded, counts = [], {"truncated": 0, "dropped_too_long": 0}
    for example, prompt, response in zip(examples, prompt_ids, response_ids):
        if len(prompt) >= max_length:
            counts["dropped_too_long"] += 1
            continue
        cut = len(prompt) + len(response) > max_length
        if cut:
            counts["truncated"] += 1
            response = response[:max_length - len(prompt)]
        encoded.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response,
                        "example": example, "cut": cut})
    return encoded, counts


def encode_heldout(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Held-out rows ({"prompt", "reference"}, + "messages" for chat) as {"input_ids", "labels"},
    tokenized exactly as training tokenizes a row, so a perplexity scores what training optimised."""
    examples = [{**row, "response": row["reference"]} for row in rows]
    encoded, _ = _tokenize(examples, False, tokenizer, max_length)
    return [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in encoded]


def _to_dataset(encoded: list[dict]) -> datasets.Dataset:
    import datasets

    ids = datasets.List(datasets.Value("int64"))
    features = datasets.Features({"input_ids": ids, "attention_mask": ids, "labels": ids})
    return datasets.Dataset.from_dict({"input_ids": [e["input_ids"] for e in encoded],
                                       "attention_mask": [[1] * len(e["input_ids"]) for e in encoded],
                                       "labels": [e["labels"] for e in encoded]}, features=features)


def _eval_size(rows: int, fraction: float) -> int:
    if fraction <= 0 or rows < 2:
        return 0
    return min(rows - 1, max(1, round(rows * fraction)))


def _label_tokens(encoded: list[dict]) -> int:
    return sum(sum(1 for label in e["labels"] if label != -100) for e in encoded)


def _heldout_row(example: dict) -> dict:
    row = {"prompt": example["prompt"], "reference": example["response"]}
    if "messages" in example:
        row["messages"] = example["messages"]
    return row


# ---- the stage ------------------------------------------------------------------------------

@dataclass
class Split:
    """Examples after selection and the held-out split, before any teacher rewrites responses."""
    train: list[dict]  # tokenized: {"input_ids", "labels", "example"}
    heldout: list[dict]
    format: DataFormat
    stats: dict[str, int]


def split(cfg: RunConfig, tokenizer, dataset: str | None = None) -> Split:
    """Load, detect, clean, sample, tokenize and split. Deterministic for a config, so a teacher can
    write responses for exactly the prompts training will see. `dataset` overrides cfg.dataset."""
    rows = load_rows(cfg, dataset)
    fmt = detect_format(rows)
    ui.info(f"Detected {fmt.description()}{' pairs' if fmt.kind == 'pairs' else ''} in {_rows(rows.num_rows)}")

    examples, dropped = _select(rows, fmt, cfg.seed, cfg.max_samples)
    if dropped:
        ui.warning(f"Skipped {_rows(dropped)} with empty or missing {_needed(fmt)}")
    if not examples:
        raise UserError(f"every row of {dataset or cfg.dataset} was skipped: all {rows.num_rows} have empty or "
                        f"missing {_needed(fmt)}", hint="check that the file holds the data you expect")
    if len(examples) < cfg.max_samples:
        ui.info(f"max_samples is {cfg.max_samples}, but only {_rows(len(examples))} can be used; using them all")

    encoded, counts = _tokenize(examples, fmt.kind == "text", tokenizer, cfg.max_length)
    if counts["dropped_too_long"]:
        ui.warning(f"Dropped {_rows(counts['dropped_too_long'])} whose prompt alone fills "
                   f"max_length ({cfg.max_length} tokens)")
    if counts["truncated"]:
        ui.warning(f"Truncated {_rows(counts['truncated'])} to max_length ({cfg.max_length} tokens)")
    if not encoded:
        raise UserError(f"every prompt is longer than max_length ({cfg.max_length} tokens)",
                        hint="raise max_length, or use shorter prompts")
    # Which rows are held out depends on prompt lengths only, never on responses.
    n_eval = _eval_size(len(encoded), cfg.eval_fraction)
    train, heldout = encoded[:len(encoded) - n_eval], encoded[len(encoded) - n_eval:]
    stats = {"rows_loaded": rows.num_rows, "dropped_empty": dropped, "rows_used": len(encoded),
             "truncated": counts["truncated"], "dropped_too_long": counts["dropped_too_long"], "dropped_long": 0}
    return Split(train, heldout, fmt, stats)


def _drop_cut(train: list[dict], max_length: int) -> tuple[list[dict], int]:
    """long_rows drop: training rows that were cut at max_length leave, so every row trained on ends as
    written (its final answer and EOS). Held-out rows stay: the benchmark asks what users will ask."""
    kept = [e for e in train if not e["cut"]]
    if not kept:
        raise UserError(f"long_rows is drop, and every training row is longer than max_length ({max_length} tokens)",
                        hint="raise max_length, or set long_rows truncate")
    if len(kept) < len(train):
        ui.info(f"Left {_rows(len(train) - len(kept))} longer than max_length out of training (long_rows drop)")
    return kept, len(train) - len(kept)


def prepare(cfg: RunConfig, tokenizer, dataset: str | None = None,
            rewrite: Callable[[dict], dict | None] | None = None) -> PreparedData:
    """The training and held-out data. `rewrite` replaces a training example's response (the
    teacher's, in sequence-level distillation) or drops it (None); held-out references stay."""
    parts = split(cfg, tokenizer, dataset)
    train, held, stats = parts.train, parts.heldout, dict(parts.stats)
    if rewrite is not None:
        rewritten = [new for e in train if (new := rewrite(e["example"])) is not None]
        if len(rewritten) < len(train):
            ui.info(f"{_rows(len(train) - len(rewritten))} without a usable teacher response left out of training")
        if not rewritten:
            raise UserError("no training row has a usable teacher response",
                            hint="read the generation cache in the output directory; lower the filters "
                                 "(generation_drop_incomplete false) or raise generation_max_new_tokens")
        train, counts = _tokenize(rewritten, False, tokenizer, cfg.max_length)
        stats["truncated"] = counts["truncated"]
    if cfg.long_rows == "drop":  # the rows trained on: the teacher's when it rewrote them
        train, stats["dropped_long"] = _drop_cut(train, cfg.max_length)
    stats.update({"train_rows": len(train), "eval_rows": len(held),
                  "train_label_tokens": _label_tokens(train), "eval_label_tokens": _label_tokens(held)})
    ui.info(f"{_rows(len(train))} to train on ({stats['train_label_tokens']} tokens counted in the loss), "
            f"{len(held)} held out")
    heldout = [] if parts.format.kind == "text" else [_heldout_row(e["example"]) for e in held]
    return PreparedData(_to_dataset(train), _to_dataset(held), heldout, parts.format, stats)


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


def _needed(fmt: DataFormat) -> str:
    if fmt.kind == "pairs":
        return f"{fmt.prompt_columns[0]} or {fmt.response_column}"
    if fmt.kind == "chat":
        return f"conversations ending in an assistant turn ('{fmt.prompt_columns[0]}')"
    return f"'{fmt.prompt_columns[0]}'"


# ---- batching -------------------------------------------------------------------------------

def make_collator(tokenizer):
    """Pads each batch to its longest row; padding gets attention 0 and label -100."""
    from transformers import DataCollatorForSeq2Seq

    if tokenizer.pad_token is None:
        # Padded positions are masked out of attention and loss, so which id fills them is moot.
        tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", pad_to_multiple_of=None, label_pad_token_id=-100)
