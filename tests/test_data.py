"""finetuner.data on real files written to disk and the tokenizer trained in conftest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from finetuner.config import RunConfig
from finetuner.data.formats import DataFormat, detect_format
from finetuner.data.preparing import make_collator, prepare
from finetuner.data.reading import load_rows
from finetuner.formatting import render_messages_prompt, render_prompt
from finetuner.ui import UserError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(path: Path | str, **settings) -> RunConfig:
    return RunConfig(dataset=str(path), **settings)


def counted(row: dict) -> list[int]:
    return [label for label in row["labels"] if label != -100]


CHAT = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is 2 plus 3?"},
                  {"role": "assistant", "content": "2 plus 3 is 5."},
                  {"role": "user", "content": "And 4 plus 4?"},
                  {"role": "assistant", "content": "4 plus 4 is 8."}]},
    {"messages": [{"role": "user", "content": "What is 1 plus 1?"},
                  {"role": "assistant", "content": "1 plus 1 is 2."}]},
]


# ---- detecting formats ----------------------------------------------------------------------

def test_detects_question_answer_jsonl(qa_file):
    rows = load_rows(config(qa_file))
    assert rows.num_rows == 64
    assert detect_format(rows) == DataFormat("pairs", ("question",), "answer")
    assert detect_format(rows).description() == "question → answer"


def test_detects_instruction_input_output_in_a_json_array(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
                                {"instruction": "Say hello.", "input": "", "output": "Hello!"}]))
    fmt = detect_format(load_rows(config(path)))
    assert fmt == DataFormat("pairs", ("instruction", "input"), "output")
    assert fmt.description() == "instruction + input → output"


def test_detects_prompt_completion_csv(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text('prompt,completion\n"Hi, there",Hello\nCount,"1, 2, 3"\n')
    rows = load_rows(config(path))
    assert detect_format(rows) == DataFormat("pairs", ("prompt",), "completion")
    assert rows[0] == {"prompt": "Hi, there", "completion": "Hello"}


def test_detects_parquet(tmp_path):
    import datasets

    path = tmp_path / "pr.parquet"
    datasets.Dataset.from_list([{"prompt": "Hi", "response": "Hello"}] * 3).to_parquet(str(path))
    assert detect_format(load_rows(config(path))) == DataFormat("pairs", ("prompt",), "response")


def test_detects_plain_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("The quick brown fox.\n\nJumps over the lazy dog.\n")
    assert detect_format(load_rows(config(path))) == DataFormat("text", ("text",))


def test_detects_the_only_string_column_as_text(tmp_path):
    path = write_jsonl(tmp_path / "body.jsonl", [{"id": 1, "body": "Some words."}])
    assert detect_format(load_rows(config(path))) == DataFormat("text", ("body",))


@pytest.mark.parametrize("column, turn", [
    ("messages", lambda role, text: {"role": role, "content": text}),
    ("conversations", lambda role, text: {"from": {"user": "human", "assistant": "gpt"}[role], "value": text}),
])
def test_detects_chat(tmp_path, column, turn):
    path = write_jsonl(tmp_path / "chat.jsonl",
                       [{column: [turn("user", "Hi"), turn("assistant", "Hello")]}] * 2)
    assert detect_format(load_rows(config(path))) == DataFormat("chat", (column,))


# ---- tokenizing -----------------------------------------------------------------------------

def test_labels_mask_exactly_the_prompt(qa_file, tokenizer, capsys):
    data = prepare(config(qa_file, eval_fraction=0.25), tokenizer)
    assert "Detected question → answer pairs in 64 rows" in capsys.readouterr().out
    assert len(data.heldout) == data.eval.num_rows == 16
    for row, held in zip(data.eval, data.heldout):
        prompt = tokenizer(render_prompt(tokenizer, held["prompt"]), add_special_tokens=False)["input_ids"]
        assert row["input_ids"][:len(prompt)] == prompt
        assert row["labels"][:len(prompt)] == [-100] * len(prompt)
        assert row["labels"][len(prompt):] == row["input_ids"][len(prompt):]
        assert tokenizer.decode(counted(row)) == held["reference"] + tokenizer.eos_token
        assert re.search(r"\n#### \d+$", held["reference"])
    for row in data.train:
        assert row["input_ids"][-1] == row["labels"][-1] == tokenizer.eos_token_id
        assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert data.stats["train_label_tokens"] == sum(len(counted(r)) for r in data.train)


def test_instruction_and_input_make_one_prompt(tmp_path, tokenizer):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
                                {"instruction": "Say hello.", "input": "", "output": "Hello!"}] * 4))
    data = prepare(config(path, eval_fraction=0.5), tokenizer)
    prompts = {row["prompt"] for row in data.heldout}
    assert prompts <= {"Add the numbers.\n\n2 and 3", "Say hello."}


def test_chat_trains_on_the_last_assistant_turn(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    data = prepare(config(path, eval_fraction=0.5), tokenizer)
    held, row = data.heldout[0], data.eval[0]
    expected = next(c["messages"][:-1] for c in CHAT if c["messages"][-1]["content"] == held["reference"])
    assert held["messages"] == expected
    assert held["prompt"] == expected[-1]["content"]
    prompt = tokenizer(render_messages_prompt(tokenizer, expected), add_special_tokens=False)["input_ids"]
    assert row["input_ids"][:len(prompt)] == prompt
    assert tokenizer.decode(counted(row)) == held["reference"] + tokenizer.eos_token


def test_plain_text_counts_every_token(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text("The quick brown fox.\n\nJumps over the lazy dog.\n")
    data = prepare(config(path, eval_fraction=0.0), tokenizer)
    assert data.stats["dropped_empty"] == 1  # the blank line
    assert data.heldout == [] and data.eval.num_rows == 0
    for row in data.train:
        assert row["labels"] == row["input_ids"]
        assert row["input_ids"][-1] == tokenizer.eos_token_id
    texts = {tokenizer.decode(r["input_ids"]) for r in data.train}
    assert texts == {"The quick brown fox.<|im_end|>", "Jumps over the lazy dog.<|im_end|>"}


def test_builtin_gsm8k(tokenizer):
    rows = load_rows(RunConfig(dataset="gsm8k"))
    assert rows.num_rows == 1319
    assert detect_format(rows) == DataFormat("pairs", ("question",), "answer")
    data = prepare(RunConfig(dataset="gsm8k", max_samples=8, max_length=1024), tokenizer)
    assert data.stats["rows_used"] == 8
    assert all(re.search(r"#### [-\d,.]+$", row["reference"]) for row in data.heldout)


def test_sampling_is_seeded_and_heldout_is_disjoint(qa_file, tokenizer):
    first = prepare(config(qa_file, max_samples=20, eval_fraction=0.25), tokenizer)
    again = prepare(config(qa_file, max_samples=20, eval_fraction=0.25), tokenizer)
    other = prepare(config(qa_file, max_samples=20, eval_fraction=0.25, seed=7), tokenizer)
    assert (first.train.num_rows, first.eval.num_rows) == (15, 5)
    assert first.train["input_ids"] == again.train["input_ids"]
    assert first.heldout == again.heldout
    assert first.train["input_ids"] != other.train["input_ids"]
    train = {tuple(ids) for ids in first.train["input_ids"]}
    assert not train & {tuple(ids) for ids in first.eval["input_ids"]}


def test_fewer_rows_than_max_samples_are_all_used(qa_file, tokenizer, capsys):
    data = prepare(config(qa_file, max_samples=1000, eval_fraction=0.1), tokenizer)
    assert data.stats["rows_used"] == 64
    assert (data.stats["train_rows"], data.stats["eval_rows"]) == (58, 6)
    assert "only 64 rows can be used" in capsys.readouterr().out


@pytest.mark.parametrize("rows, fraction, expected", [(3, 0.01, 1), (2, 0.5, 1), (1, 0.5, 0), (8, 0.0, 0)])
def test_eval_split_size(tmp_path, tokenizer, rows, fraction, expected):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(rows)])
    data = prepare(config(path, eval_fraction=fraction), tokenizer)
    assert data.eval.num_rows == len(data.heldout) == expected
    assert data.train.num_rows == rows - expected


def test_truncation_keeps_the_prompt_and_drops_rows_without_room(tmp_path, tokenizer, capsys):
    rows = [{"question": "What is 1 plus 2?", "answer": "1 plus 2 is 3. " * 20},
            {"question": "What is 3 plus 4? " * 20, "answer": "7"},
            {"question": "What is 5 plus 6?", "answer": "11"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    data = prepare(config(path, max_length=32, eval_fraction=0.0), tokenizer)
    assert (data.stats["truncated"], data.stats["dropped_too_long"], data.stats["train_rows"]) == (1, 1, 2)
    assert all(len(ids) <= 32 for ids in data.train["input_ids"])
    assert max(len(ids) for ids in data.train["input_ids"]) == 32
    out = capsys.readouterr().out
    assert "Truncated 1 row to max_length (32 tokens)" in out
    assert "Dropped 1 row whose prompt alone fills max_length" in out


def test_long_rows_drop_leaves_cut_training_rows_out_and_keeps_the_held_out_ones(tmp_path, tokenizer, capsys):
    long = {"question": "What is 1 plus 2?", "answer": "1 plus 2 is 3. " * 20 + "#### 3"}
    rows = [long, {"question": "What is 5 plus 6?", "answer": "#### 11"}, {"question": "What is 7 plus 8?", "answer": "#### 15"},
            {"question": "What is 2 plus 2?", "answer": "2 plus 2 is 4. " * 20 + "#### 4"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    cut = prepare(config(path, max_length=32, eval_fraction=0.25, seed=0), tokenizer)
    capsys.readouterr()
    data = prepare(config(path, max_length=32, eval_fraction=0.25, seed=0, long_rows="drop"), tokenizer)
    # Every row trained on ends as written, with its EOS; the cut one is gone, not shortened.
    assert (cut.stats["train_rows"], data.stats["train_rows"], data.stats["dropped_long"]) == (3, 2, 1)
    assert all(ids[-1] == tokenizer.eos_token_id and len(ids) < 32 for ids in data.train["input_ids"])
    # The held-out rows are the same either way: the benchmark asks what users will ask.
    assert data.heldout == cut.heldout and len(data.heldout) == 1
    assert "Left 1 row longer than max_length out of training (long_rows drop)" in capsys.readouterr().out


def test_collator_pads_to_the_longest_in_the_batch(qa_file, tokenizer):
    data = prepare(config(qa_file, max_samples=6, eval_fraction=0.0), tokenizer)
    rows = [data.train[i] for i in range(4)]
    batch = make_collator(tokenizer)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, longest)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert batch["labels"][i, n:].tolist() == [-100] * (longest - n)


# ---- bad data -------------------------------------------------------------------------------

def test_missing_file(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "gone.jsonl", [{"question": "Q", "answer": "A"}])
    cfg = config(path)  # the file existed when the answers were checked
    path.unlink()
    with pytest.raises(UserError, match="no such file: .*gone.jsonl"):
        prepare(cfg, tokenizer)


@pytest.mark.parametrize("name, content", [("empty.jsonl", ""), ("blank.jsonl", "\n\n  \n"), ("empty.csv", "")])
def test_empty_file(tmp_path, tokenizer, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=f"{name} is empty"):
        prepare(config(path), tokenizer)


def test_header_only_csv(tmp_path, tokenizer):
    path = tmp_path / "header.csv"
    path.write_text("question,answer\n")
    with pytest.raises(UserError, match="has a header but no rows"):
        prepare(config(path), tokenizer)


def test_bad_jsonl_line_is_located(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q1", "answer": "A1"}\n{"question": "Q2", "answer": "A2"}\n'
                    '{"question": oops}\n{"question": "Q4", "answer": "A4"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 3 is not valid JSON") as caught:
        prepare(config(path), tokenizer)
    assert "one JSON object" in caught.value.hint


def test_bad_json_document_is_located(tmp_path, tokenizer):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"question": "Q1", "answer": "A1"},\n  {"question": "Q2" "answer": "A2"}\n]\n')
    with pytest.raises(UserError, match=r"bad.json: line 3 is not valid JSON"):
        prepare(config(path), tokenizer)


def test_json_object_with_a_list_of_records(tmp_path, tokenizer):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "data": [{"question": "Q1", "answer": "A1"},
                                                       {"question": "Q2", "answer": "A2"}]}))
    rows = load_rows(config(path))
    assert rows.num_rows == 2
    assert detect_format(rows) == DataFormat("pairs", ("question",), "answer")


def test_csv_nan_cells_and_short_rows_are_dropped_and_counted(tmp_path, tokenizer, capsys):
    path = tmp_path / "gaps.csv"
    path.write_text("question,answer\nQ1,1\n,2\nQ3,\nQ4,4\nQ5\nQ6,NaN\n")
    data = prepare(config(path, eval_fraction=0.0), tokenizer)
    assert data.stats["rows_loaded"] == 6 and data.stats["dropped_empty"] == 4
    assert data.stats["train_rows"] == 2
    assert "Skipped 4 rows with empty or missing question or answer" in capsys.readouterr().out
    # Numbers stay as written: pandas would make the gappy answer column floats ("4.0").
    answers = {tokenizer.decode(counted(r)) for r in data.train}
    assert answers == {"1<|im_end|>", "4<|im_end|>"}


def test_csv_with_a_stray_field(tmp_path, tokenizer):
    path = tmp_path / "stray.csv"
    path.write_text("question,answer\nQ1,A1\nQ2,A2,extra\n")
    with pytest.raises(UserError, match="could not read .*stray.csv as CSV: .*line 3") as caught:
        prepare(config(path), tokenizer)
    assert "double quotes" in caught.value.hint


def test_no_usable_column_lists_the_columns(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"id": 1, "score": 0.5}])
    with pytest.raises(UserError, match=r"no column to train on \(columns: id, score\)"):
        prepare(config(path), tokenizer)


def test_every_row_filtered_out(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "hollow.jsonl", [{"question": "Q", "answer": ""}, {"question": " ", "answer": "A"}])
    with pytest.raises(UserError, match="every row of .*hollow.jsonl was skipped: all 2 have empty or missing"):
        prepare(config(path), tokenizer)


def test_every_prompt_too_long(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "long.jsonl", [{"question": "What is 3 plus 4? " * 20, "answer": "7"}])
    with pytest.raises(UserError, match=r"every prompt is longer than max_length \(16 tokens\)"):
        prepare(config(path, max_length=16), tokenizer)


@pytest.mark.parametrize("name", ["latin.jsonl", "latin.csv", "latin.txt"])
def test_non_utf8_file(tmp_path, tokenizer, name):
    path = tmp_path / name
    body = {"latin.jsonl": '{"question": "Q", "answer": "A"}\n{"question": "Café?", "answer": "Oui"}\n',
            "latin.csv": "question,answer\nCafé?,Oui\nQ,A\n", "latin.txt": "Hello.\nCafé au lait.\n"}[name]
    path.write_bytes(body.encode("latin-1"))
    with pytest.raises(UserError, match=f"{name} is not UTF-8 text \\(line 2") as caught:
        prepare(config(path), tokenizer)
    assert "re-encode it as UTF-8" in caught.value.hint


def test_offline_hub_dataset(tokenizer):
    with pytest.raises(UserError, match=r"could not reach the Hugging Face Hub to load dataset "
                                        r"someone/some-dataset \(offline\?\)") as caught:
        prepare(RunConfig(dataset="someone/some-dataset"), tokenizer)
    assert "local .jsonl/.csv/.parquet" in caught.value.hint


def test_corrupt_parquet(tmp_path, tokenizer):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(UserError, match="could not read .*broken.parquet as Parquet"):
        prepare(config(path), tokenizer)


def test_a_folder_of_data_files_loads_as_one_dataset(tmp_path):
    from finetuner.config import RunConfig
    from finetuner.data.reading import load_rows
    from finetuner.sources import check_dataset

    folder = tmp_path / "parts"
    folder.mkdir()
    for part in range(2):
        (folder / f"part{part}.jsonl").write_text(
            "".join(json.dumps({"question": f"q{part}{i}", "answer": "a"}) + "\n" for i in range(3)))
    assert check_dataset(str(folder)) is None
    rows = load_rows(RunConfig(dataset=str(folder)))
    assert rows.num_rows == 6


def test_a_dataset_under_home_given_with_a_tilde(tmp_path, monkeypatch):
    from finetuner.sources import check_dataset

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(3)))
    assert check_dataset("~/d.jsonl") is None
    rows = load_rows(RunConfig(dataset="~/d.jsonl"))
    assert rows.num_rows == 3
