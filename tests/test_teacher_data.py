"""Teacher-written data a user can trust: grounded answers from documents, clean questions, the
filters and the stop below generation_min_kept, the endpoint's preflight, cost, and a response cache
shared across runs. Against tests/teacher_server.py, which replies like a chatty API model."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from finetuner.teachers.filters import Duplicates, is_echo, is_refusal
from finetuner.teachers.preflight import redact
from finetuner.teachers.questions import parse_questions
from teacher_server import TeacherServer
from test_teachers import SECRET, cached, cli

CHATTY = """Sure! Here are three questions that the text answers:

## Questions

1. **What is the smallest deployable unit in Kubernetes?**
**Question 2:** How does a service expose pods?
```python
print("What is this?")
```
3) Why would a pod hold more than one container?
4. what is the smallest deployable unit in Kubernetes
5. What is the smallest deployable unit in Kubernetes?
6. I'm ready to help. What's the text you'd like to edit?
How can I help you today?

The text is:
I hope these help!"""


# ---- the question parser --------------------------------------------------------------------

def test_parser_keeps_only_real_questions_from_a_chatty_reply():
    assert parse_questions(CHATTY, 5) == ["What is the smallest deployable unit in Kubernetes?",
                                          "How does a service expose pods?",
                                          "Why would a pod hold more than one container?"]
    assert parse_questions(CHATTY, 2) == parse_questions(CHATTY, 5)[:2]


@pytest.mark.parametrize("reply", [
    '{"questions": ["What is a pod?", "1. How does a service expose pods?", "What is a pod?"]}',
    'Here you go:\n```json\n["What is a pod?", "How does a service expose pods?"]\n```',
    '[{"question": "What is a pod?"}, {"question": "How does a service expose pods?"}, {"question": "## Notes"}]',
])
def test_parser_reads_json_replies(reply):
    assert parse_questions(reply, 3) == ["What is a pod?", "How does a service expose pods?"]


# ---- the filters, one by one ----------------------------------------------------------------

def test_filters_recognise_refusals_echoes_and_near_duplicates():
    assert is_refusal("I'm sorry, but I can't help with that.") and is_refusal("As an AI language model, I have no")
    assert is_refusal("NOT IN THE TEXT") and not is_refusal("A pod is the smallest deployable unit.")
    assert is_echo("What is a pod?", "What is a pod?") and not is_echo("Paris", "Which is the capital: Paris or Rome?")
    seen = Duplicates()
    long = "A pod is the smallest deployable unit of computing that you can create and manage in Kubernetes"
    assert not seen.seen(long) and seen.seen(long.upper() + "!") and seen.seen(long + " today")
    assert not seen.seen("Yes.") and not seen.seen("Yes.")  # short answers may repeat


def test_redact_removes_the_key_and_halves_of_it():
    assert redact(f"bad key {SECRET}", SECRET) == "bad key ***"
    assert SECRET[:12] not in redact(f"key {SECRET[:12]}...", SECRET)


def _prompts_file(tmp_path, rows) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return str(path)


# A refusal, an echo, two identical answers (their references have no checkable final answer, so
# verified keeps them for the duplicates filter), and a final answer that differs from the reference.
FILTERED = [("Say 5 please refuse", "5"), ("Say 6 please echo this prompt back", "6"),
            ("Say 7 please repeat", "seven"), ("Say 8 please repeat", "eight"), ("Say 9", "10"),
            ("Say 11", "11"), ("Say 12", "12"), ("Say 13", "13"), ("Say 14", "14"), ("Say 15", "15")]


def test_each_filter_is_counted_in_the_summary(tmp_path, tiny_llama, capsys):
    data = _prompts_file(tmp_path, FILTERED)
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, data, "ok", server.base, "--generate-only", "--set", "max_samples=10",
                   "--set", "eval_fraction=0.1", "--set", "generation_filters=duplicates,refusals,echoes,verified",
                   "--set", "batch_size=2") == 0
    out = capsys.readouterr().out
    train = [q for q, _ in FILTERED]
    assert "Teacher responses: " in out and "kept for training" in out
    dropped = next(line for line in out.splitlines() if "dropped:" in line)
    # Which prompts were held out decides the exact counts; each filter that met its prompt counts it.
    for marker, reason in (("refuse", "1 refusal"), ("echo", "1 echo"), ("Say 9", "1 unverified")):
        assert (reason in dropped) == any(marker in q for q in _trained(tmp_path, train))
    assert ("duplicate" in dropped) == (sum("repeat" in q for q in _trained(tmp_path, train)) == 2)
    assert "kept samples" in out
    summary = json.loads((tmp_path / "out" / "generation_summary.json").read_text())
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["total"] == 9


def _trained(tmp_path, prompts) -> list[str]:
    """The prompts the training split asked for (the held-out one's answer is not filtered)."""
    held = {json.loads(line)["prompt"] for line in (tmp_path / "out" / "teacher_heldout.jsonl").read_text().splitlines()}
    return [p for p in prompts if p not in held]


def test_no_filters_keeps_refusals(tmp_path, tiny_llama, capsys):
    data = _prompts_file(tmp_path, FILTERED)
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, data, "ok", server.base, "--generate-only", "--set", "max_samples=10",
                   "--set", "eval_fraction=0.1", "--set", "generation_filters=none") == 0
    assert "Teacher responses: 9 of 9 kept" in capsys.readouterr().out


# ---- the stop below the threshold -----------------------------------------------------------

def test_mostly_unusable_responses_stop_before_training_and_stay_on_disk(tmp_path, tiny_llama, capsys):
    rows = [(f"Question {i} please refuse", str(i)) for i in range(6)] + [(f"Question {i}", str(i)) for i in range(6, 9)]
    data = _prompts_file(tmp_path, rows)
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, data, "ok", server.base, "--set", "max_samples=9",
                   "--set", "eval_fraction=0.1", "--set", "batch_size=1") == 1
        captured = capsys.readouterr()
        err = captured.err
        assert "teacher responses are usable" in err and "refusal" in err and "below generation_min_kept 0.5" in err
        assert "--resume" in err and "generation_min_kept 0" in err and "Traceback" not in err
        assert err.count("Error:") == 1 and not (tmp_path / "out" / "model").exists()
        assert len(cached(tmp_path)) == 9  # every response is kept on disk
        asked = len(server.requests)
        # Going on anyway (generation_min_kept 0) asks the teacher for nothing again.
        assert cli(tmp_path, tiny_llama, data, "ok", server.base, "--generate-only", "--resume", "--set", "max_samples=9",
                   "--set", "eval_fraction=0.1", "--set", "generation_min_kept=0") == 0
        assert len(server.requests) == asked


def test_all_cut_off_says_raise_the_token_limit(tmp_path, tiny_llama, qa_file, capsys):
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, qa_file, "truncated", server.base, "--generate-only") == 1
    err = capsys.readouterr().err
    assert "only 0 of 6 teacher responses are usable (6 cut off at generation_max_new_tokens (16))" in err
    assert "raise generation_max_new_tokens (now 16)" in err


# ---- documents: grounded answers, clean questions ---------------------------------------------

@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "pods.md").write_text("# Pods\n\nA pod is the smallest deployable unit. Containers inside share "
                                    "storage and network. Kubernetes schedules every replica onto nodes.\n")
    (folder / "services.txt").write_text("A service exposes pods on a stable address. Clients reach backends "
                                         "through its name. Selectors choose matching labels.\n")
    return folder


@pytest.mark.parametrize("model, structured", [("ok", True), ("plain", False)])
def test_document_answers_are_grounded_in_their_chunk(tmp_path, tiny_llama, docs, capsys, model, structured):
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, docs, model, server.base, "--generate-only", "--set", "questions_per_chunk=3",
                   "--set", "generation_max_new_tokens=64", "--set", "max_samples=50", "--set", "batch_size=1") == 0
    asks = [b for b in server.requests if "questions that the text below answers" in b["messages"][-1]["content"]]
    assert ("response_format" in asks[0]) and (all("response_format" in b for b in asks) == structured)
    answers = [b for b in server.requests if b["messages"][0]["role"] == "system"]
    pairs = [json.loads(line) for line in (tmp_path / "out" / "document_qa.jsonl").read_text().splitlines()]
    assert len(pairs) == 6 and len(answers) == 6  # 3 real questions a chunk: no preamble, heading or code
    assert all(p["question"].endswith("?") and "**" not in p["question"] and "Question 2" not in p["question"]
               for p in pairs)
    for pair in pairs:  # the chunk reached the teacher with its question, and the pair records it
        sent = next(b for b in answers if b["messages"][-1]["content"].endswith(f"Question: {pair['question']}"))
        assert pair["source"] in ("pods.md#1", "services.txt#1")
        assert pair["context"] in sent["messages"][-1]["content"] and "from nothing else" in sent["messages"][0]["content"]
        assert pair["answer"].removeprefix("According to the text, ") in pair["context"]
    out = capsys.readouterr().out
    assert "Questions kept per chunk (asked for 3): 3 in 2 chunks; 6 questions to answer" in out


# ---- the preflight ----------------------------------------------------------------------------

def _one_line_before_the_plan(capsys, message: str) -> str:
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err + captured.out
    assert captured.err.count("Error:") == 1 and "Plan" not in captured.out  # before the plan and "Start?"
    return captured.err


def test_preflight_names_a_wrong_model_and_lists_the_served_ones(tmp_path, tiny_llama, qa_file, capsys):
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, qa_file, "gpt-nonexistent", server.base) == 1
        assert server.gets == ["/v1/models"] and [b["max_tokens"] for b in server.requests] == [1]
    err = _one_line_before_the_plan(capsys, "model 'gpt-nonexistent' is not served at")
    assert "it serves: ok, ratelimit" in err and "after" not in err and "--resume" not in err


def test_preflight_names_a_missing_v1(tmp_path, tiny_llama, qa_file, capsys):
    with TeacherServer() as server:
        base = server.base.removesuffix("/v1")
        assert cli(tmp_path, tiny_llama, qa_file, "ok", base) == 1
    _one_line_before_the_plan(capsys, f"teacher_api_base is missing its /v1")


def test_preflight_names_an_unset_key_variable(tmp_path, tiny_llama, qa_file, capsys, monkeypatch):
    monkeypatch.delenv("TEST_TEACHER_KEY", raising=False)
    with TeacherServer(key=SECRET) as server:
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base) == 1
    _one_line_before_the_plan(capsys, "needs an API key (401), and the environment variable TEST_TEACHER_KEY is not set")


def test_preflight_redacts_a_key_the_server_echoes(tmp_path, tiny_llama, qa_file, capsys, monkeypatch):
    wrong = "sk-wrong-key-that-the-server-echoes-42"
    monkeypatch.setenv("TEST_TEACHER_KEY", wrong)
    with TeacherServer(key=SECRET) as server:
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base) == 1
    err = _one_line_before_the_plan(capsys, "refused the API key in TEST_TEACHER_KEY (401): Incorrect API key provided: ***")
    assert wrong not in err and wrong[:10] not in err


def test_preflight_names_a_hung_server_and_its_timeout(tmp_path, tiny_llama, qa_file, capsys):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        held = []
        threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(4)], daemon=True).start()
        base = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        assert cli(tmp_path, tiny_llama, qa_file, "ok", base) == 1
    _one_line_before_the_plan(capsys, f"{base} accepted the connection but did not answer GET /models or a "
                                      "one-token completion within 1 s each (the preflight's first-reply timeout)")


def test_a_400_is_not_said_to_be_retried_nor_offered_resume(tmp_path, tiny_llama, qa_file, capsys):
    with TeacherServer() as server:  # "plain" answers, but refuses an unsupported parameter: here, top_p 0.5
        server.reject_top_p = True
        assert cli(tmp_path, tiny_llama, qa_file, "plain", server.base, "--generate-only",
                   "--set", "generation_top_p=0.5") == 1
    err = capsys.readouterr().err
    assert "refused a request (400): top_p is not supported" in err
    assert "attempts" not in err and "--resume" not in err and "Traceback" not in err


# ---- cost and the shared cache ----------------------------------------------------------------

def test_a_shared_cache_feeds_a_second_output_dir_with_no_new_requests(tmp_path, tiny_llama, qa_file, capsys):
    shared = tmp_path / "shared-responses"
    prices = ("--set", f"generation_cache={shared}", "--set", "generation_price_in=2",
              "--set", "generation_price_out=10")
    with TeacherServer() as server:
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base, "--generate-only", *prices, out="first") == 0
        first = capsys.readouterr().out
        asked = len(server.requests)
        assert asked == 8 and server.gets == ["/v1/models"]  # the preflight's one GET, then 8 prompts
        assert (shared / "teacher_responses.jsonl").is_file()
        assert not (tmp_path / "first" / "teacher_responses.jsonl").exists()
        assert cli(tmp_path, tiny_llama, qa_file, "ok", server.base, "--generate-only", *prices, "--set",
                   "learning_rate=0.001", out="second") == 0
        assert len(server.requests) == asked  # nothing new (the preflight found "ok" listed)
    second = capsys.readouterr().out
    assert "estimated generation cost" in first and "at most $0.00" in first
    assert "cost $0.0006 this run ($0.0006 for all the data)" in first  # 80 in, 40 out
    assert "teacher requests" in second and "8 (8 already cached)" in second and "none: every response is cached" in second
    assert "8 requests (8 from the cache)" in second and "cost $0.0000 this run ($0.0006 for all the data)" in second
    summary = json.loads((tmp_path / "second" / "generation_summary.json").read_text())
    assert summary["new_requests"] == 0 and summary["cost"] == pytest.approx(0.00056)


def test_the_model_card_records_the_generation_totals(tmp_path):
    from finetuner.config import RunConfig
    from finetuner.model_card import model_card

    (tmp_path / "generation_summary.json").write_text(json.dumps(
        {"teacher": "t", "what": "responses", "kept": 7, "total": 9, "dropped": {"refusal": 2}, "filters": ["refusals"],
         "requests": 11, "tokens_in": 1200, "tokens_out": 800, "cost": 0.0104}))
    cfg = RunConfig(approach="distillation", teacher="ok", student="s", distillation_mode="responses",
                    teacher_api_base="http://127.0.0.1:1/v1", output_dir=str(tmp_path))
    card = model_card(cfg, None, adapter=False)
    assert "## Teacher-written data" in card and "7 were kept for training (dropped: 2 refusal" in card
    assert "1,200 prompt and 800 completion tokens, cost $0.0104" in card
