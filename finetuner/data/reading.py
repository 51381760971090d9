"""Reading a dataset's raw rows: a built-in, a local file or folder, or a Hub dataset.

Every source becomes a `datasets.Dataset` of raw rows. A file that cannot be read becomes a
`UserError` that names the file and, where it can, the line: the encoding is checked up front
and a reader's failure is explained by looking at the file ourselves.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from finetuner import ui
from finetuner.data.formats import is_conversation
from finetuner.sources import DATA_BUILDERS, builtin_dataset_file, data_files_in, dataset_kind, local_path
from finetuner.ui import UserError

if TYPE_CHECKING:
    import datasets

    from finetuner.config import RunConfig

def load_rows(cfg: RunConfig, dataset: str | None = None) -> datasets.Dataset:
    """The raw rows of the configured dataset (or of `dataset`), whatever it is."""
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars; finetuner reports what it loaded
    name = dataset or cfg.dataset
    kind = dataset_kind(name)
    if kind == "builtin":
        return _load_file(builtin_dataset_file(name))
    if kind == "local":
        path = local_path(name)
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
    builder = DATA_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"unsupported file type {path.suffix or '(none)'!r}: {path}",
                        hint=f"use one of {', '.join(DATA_BUILDERS)}")
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
    if len(lists) != 1 or is_conversation(first[lists[0]]):
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
