"""The LLM judge: a deterministic grader on 127.0.0.1 receives the rubric, retries, resumes from the
cache, fails in one line without losing the benchmark, and never sees the key leak."""

from __future__ import annotations

import json

import pytest

from finetuner.benchmark import rubric
from finetuner.benchmark.judge import JUDGE_FILE, judge
from finetuner.benchmark.measure import evaluate_answers
from finetuner.config import RunConfig
from judge_server import JudgeServer

SECRET = "sk-judge-very-secret-456"
HELDOUT = [{"prompt": f"What is {a} plus {b}?", "reference": f"{a} plus {b} is {a + b}.\n#### {a + b}"}
           for a, b in [(3, 4), (12, 19), (5, 5), (7, 1)]]
RIGHT = ["3 plus 4 is 7.\n#### 7", "12 plus 19 is 31.\n#### 31", "It is 10.", "7 plus 1 is 8"]
WRONG = ["#### 6", "It is 30.", "no idea", "7 plus 1 is 9"]


def _config(server, model="grader", **extra):
    settings = dict(judge_api_base=server.base, judge_model=model, judge_api_key_env="TEST_JUDGE_KEY",
                    generation_max_retries=2, generation_timeout=2.0, generation_concurrency=2)
    return RunConfig(**{**settings, **extra})


def _results(heldout=HELDOUT):
    return [evaluate_answers("teacher", RIGHT, heldout)[0], evaluate_answers("student after", WRONG, heldout)[0]]


@pytest.mark.parametrize("reply, score, reason", [
    ("Score: 4\nReason: right answer, muddled steps.", 4, "right answer, muddled steps."),
    ("**Score:** 5/5\nReason: exact", 5, "exact"),
    ("score = 2", 2, "score = 2"),
    ("Score: 0\nReason: nothing", None, "nothing"),     # 0 is off the 1-5 rubric: unscored, never 0
    ("Score: 7", None, "Score: 7"),
    ("Score: 4.5", None, "Score: 4.5"),
    ("Looks fine to me.", None, "Looks fine to me."),
    ("", None, ""),
])
def test_a_judges_reply_is_read_on_the_rubric_or_left_unscored(reply, score, reason):
    assert rubric.read_reply(reply) == (score, reason)


def test_the_judge_grades_every_answer_on_the_rubric_and_the_key_stays_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEST_JUDGE_KEY", SECRET)
    results = _results()
    with JudgeServer(key=SECRET) as server:
        block = judge(_config(server), tmp_path, results, HELDOUT)
    assert block["status"] == "ok" and block["model"] == "grader" and block["unscored"] == block["missing"] == 0
    assert len(server.requests) == 8  # 4 answers x 2 models
    body = server.requests[0]
    assert body["temperature"] == 0 and body["max_tokens"] == 96 and body["model"] == "grader"
    sent = body["messages"][-1]["content"]
    assert rubric.RUBRIC in sent and rubric.REPLY in sent and "SOURCE" not in sent  # no source text: no faithfulness
    sent_all = [b["messages"][-1]["content"] for b in server.requests]
    assert any("QUESTION:\nWhat is 12 plus 19?" in p and "ANSWER:\nIt is 30." in p and "#### 31" in p for p in sent_all)
    assert all({k.lower(): v for k, v in h.items()}["authorization"] == f"Bearer {SECRET}" for h in server.headers)
    teacher, student = results
    assert teacher.judge["mean"] == 5 and student.judge["mean"] == 1 and student.judge["scored"] == 4
    assert student.samples[1]["judge"] == {"score": 1, "reason": "the final answer is wrong."}
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    assert SECRET not in (tmp_path / JUDGE_FILE).read_text() and SECRET not in json.dumps(block)


def test_judgements_are_cached_and_a_rerun_asks_only_for_the_missing_ones(tmp_path):
    with JudgeServer() as server:
        judge(_config(server), tmp_path, _results(), HELDOUT)
        assert len(server.requests) == 8
        judge(_config(server), tmp_path, _results(), HELDOUT)
        assert len(server.requests) == 8  # every judgement came from OUT/judgements.jsonl
        lines = (tmp_path / JUDGE_FILE).read_text().splitlines()
        (tmp_path / JUDGE_FILE).write_text("\n".join(lines[:-1]) + "\n")  # one judgement lost
        results = _results()
        judge(_config(server), tmp_path, results, HELDOUT)
        assert len(server.requests) == 9 and results[1].judge["scored"] == 4
        # Another judge model is another judgement: nothing reused.
        judge(_config(server, model="flaky"), tmp_path, _results(), HELDOUT)
        assert len(server.requests) == 9 + 16  # 8 answers, each failing once (500) and retried
        assert sorted(set(n for (model, _), n in server.attempts.items() if model == "flaky")) == [2]


def test_an_off_rubric_judge_leaves_answers_unscored_never_zero(tmp_path, capsys):
    results = _results()
    with JudgeServer() as server:
        block = judge(_config(server, model="offrubric"), tmp_path, results, HELDOUT)
    assert block["unscored"] == 8 and block["status"] == "ok"
    assert results[1].judge == {"mean": None, "low": None, "high": None, "scored": 0, "unscored": 4}
    assert results[1].samples[0]["judge"] == {"score": None, "reason": "Looks fine to me."}
    assert "8 replies were off-rubric" in capsys.readouterr().out


@pytest.mark.parametrize("model, key, message", [
    ("grader", "another-key", "the judge endpoint {base} refused the API key (401)"),
    ("missing", None, "model 'missing' is not served at {base} (404)"),
])
def test_a_failing_judge_is_one_line_and_the_benchmark_goes_on(tmp_path, monkeypatch, capsys, model, key, message):
    monkeypatch.setenv("TEST_JUDGE_KEY", SECRET)
    results = _results()
    with JudgeServer(key=key) as server:
        block = judge(_config(server, model=model), tmp_path, results, HELDOUT)
    expected = message.format(base=server.base)
    out = capsys.readouterr().out
    assert expected in block["status"] and expected in out and "--benchmark-only" in out
    assert "Traceback" not in out and SECRET not in out + json.dumps(block)
    assert results[0].judge["scored"] == 0 and block["missing"] == 8


def test_an_unreachable_judge_is_one_line(tmp_path, capsys):
    with JudgeServer() as server:
        base = server.base
    block = judge(RunConfig(judge_api_base=base, judge_model="grader", generation_max_retries=0), tmp_path,
                  _results(), HELDOUT)
    assert f"can't reach the judge endpoint {base}" in block["status"]


def test_the_spend_cap_stops_the_judge(tmp_path, capsys):
    with JudgeServer() as server:
        block = judge(_config(server, judge_token_budget=30, generation_concurrency=1), tmp_path, _results(), HELDOUT)
    assert len(server.requests) == 2  # 15 tokens each
    assert "spend cap reached" in block["status"] and "judge_token_budget" in block["status"]


def test_document_grounded_rows_are_also_judged_for_faithfulness(tmp_path):
    heldout = [{**row, "chunk": f"Source text {i}: sums of small numbers."} for i, row in enumerate(HELDOUT)]
    with JudgeServer() as server:
        judge(_config(server), tmp_path, _results(heldout), heldout)
    sent = server.requests[0]["messages"][-1]["content"]
    assert rubric.FAITHFULNESS in sent and sent.index("SOURCE:\nSource text") < sent.index("QUESTION:")


def test_benchmark_only_retries_the_judging_alone_from_the_saved_answers(tmp_path, capsys):
    from finetuner.benchmark.run import run_benchmark
    from finetuner.evaluation import benchmark_output
    from finetuner.ui import UserError

    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELDOUT))
    with JudgeServer() as gone:
        dead = gone.base
    settings = dict(judge_model="grader", benchmark_samples=4, generation_max_retries=0)
    first = run_benchmark(RunConfig(judge_api_base=dead, **settings), tmp_path,
                          [("base", WRONG, None, None), ("fine-tuned", RIGHT, None, None)])
    assert "can't reach the judge endpoint" in first["judge"]["status"]  # one line; the rest is kept
    assert first["models"][1]["accuracy"]["flexible"]["correct"] == 4 and first["verdict"] is not None
    with JudgeServer() as server:
        cfg = RunConfig(judge_api_base=server.base, **settings)
        again = benchmark_output(cfg, tmp_path)  # there is no model here: nothing could answer anew
        assert len(server.requests) == 8 and again["judge"]["status"] == "ok"
        assert again["models"][1]["judge"]["mean"] == 5 and again["models"][0]["judge"]["mean"] == 1
        assert [s["generation"] for s in again["models"][1]["samples"]] == RIGHT
        judged = {c["name"]: c for c in again["verdict"]["checks"]}
        assert judged["judge"]["text"].startswith("· judge: grader's mean score, 1-5: base 1.00")
        # Complete now: --benchmark-only benchmarks from scratch, which needs the trained model.
        with pytest.raises(UserError, match="holds no trained model"):
            benchmark_output(cfg, tmp_path)
    assert "Scoring the answers saved in" in capsys.readouterr().out


def test_a_wrong_judge_model_is_one_line_before_the_plan(tmp_path, tiny_llama, qa_file, capsys):
    import finetune_cli

    sets = {"approach": "fine-tuning", "model": str(tiny_llama), "dataset": str(qa_file), "max_samples": 16,
            "output_dir": str(tmp_path / "out"), "benchmark_samples": 2}
    with JudgeServer() as server:
        sets.update(judge_api_base=server.base, judge_model="missing")
        argv = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
        assert finetune_cli.main(argv + ["--defaults", "--yes"]) == 1
        assert server.gets == ["/v1/models"]  # then one completion, refused
    captured = capsys.readouterr()
    assert "model 'missing' is not served" in captured.err and "judge_model" in captured.err
    assert "Traceback" not in captured.err + captured.out and "Plan" not in captured.out
