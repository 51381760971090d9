from __future__ import annotations

import copy

import json

import pytest

from finetuner.benchmark.answers import answer_prompts
from finetuner.benchmark.comparison import compare, save
from finetuner.benchmark.measure import ModelResult, evaluate
from finetuner.benchmark.run import read_heldout, run_benchmark
from finetuner.benchmark.scores import rouge
from finetuner.benchmark.tables import show
from finetuner.config import RunConfig
from finetuner.ui import UserError

PROMPTS = ["What is 3 plus 4?", "The quick brown fox jumps over the lazy dog again and again", "What is 12 plus 19?"]


# ---- rouge (pure) ---------------------------------------------------------------------------

def test_identical_texts_score_one():
    assert rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == {"rouge1": 1.0, "rouge2": 1.0,
                                                                              "rougeL": 1.0}


def test_rouge_matches_hand_computed_values():
    # "the cat sat" vs "the cat ran":
    #   unigrams: 2 of 3 shared (the, cat)          -> P = R = 2/3, F = 2/3
    #   bigrams:  1 of 2 shared ("the cat")         -> F = 1/2
    #   LCS:      "the cat", length 2 of 3          -> F = 2/3
    scores = rouge(["the cat sat"], ["the cat ran"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(1 / 2)
    assert scores["rougeL"] == pytest.approx(2 / 3)


def test_rouge_is_f_measure_not_recall():
    # prediction "the cat" vs reference "the cat sat on the mat": P = 2/2, R = 2/6,
    # F = 2PR / (P + R) = (2/3) / (4/3) = 1/2
    assert rouge(["the cat"], ["the cat sat on the mat"])["rouge1"] == pytest.approx(1 / 2)


def test_rouge_averages_over_pairs():
    # pair 1: R1 = 2/3 (above); pair 2: "dog" vs "cat" shares nothing -> 0; mean = 1/3
    assert rouge(["the cat sat", "dog"], ["the cat ran", "cat"])["rouge1"] == pytest.approx(1 / 3)


def test_rouge_stems_words():
    # Porter stemming: cats -> cat, running -> run, so every unigram and the bigram match
    assert rouge(["cats running"], ["cat run"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_rouge_of_nothing_is_zero():
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError):
        rouge(["one"], [])


# ---- generation on a real tiny model --------------------------------------------------------

@pytest.fixture(scope="module")
def chatty(tiny_llama):
    """tiny_llama with its weights scaled up. At the usual init scale a random model answers
    every prompt with newlines; scaled, its greedy answers are varied and depend on the whole
    prompt, so a padding mistake changes them."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.mul_(10)
    return model


def test_generate_returns_only_the_new_tokens(chatty, tokenizer):
    answers, stats = answer_prompts(chatty, tokenizer, PROMPTS, max_new_tokens=6)
    assert len(answers) == len(PROMPTS)
    for prompt, answer in zip(PROMPTS, answers):
        assert answer  # the scaled model says something, so the checks below mean something
        assert prompt not in answer and "assistant" not in answer and "user" not in answer
    assert 0 < stats["generated_tokens"] <= 6 * len(PROMPTS)
    assert stats["tokens_per_s"] > 0


def test_decoding_speed_times_the_same_work_for_a_model_whose_answers_stop_at_once(chatty, tokenizer):
    """A model that ends every answer after one token still decodes the full length when timed, so its
    tokens/s is not its prompts' prefill spread over a handful of tokens."""
    from finetuner.benchmark.cost import decoding_speed

    import torch

    from finetuner.formatting import encode_prompt, render_prompt

    ids = torch.tensor(encode_prompt(tokenizer, [render_prompt(tokenizer, PROMPTS[0])]))
    with torch.no_grad():
        first = int(chatty(input_ids=ids).logits[0, -1].argmax())  # its greedy first token
    stops_at_once = copy.deepcopy(chatty)
    stops_at_once.generation_config.eos_token_id = [tokenizer.eos_token_id, first]
    _, short = answer_prompts(stops_at_once, tokenizer, PROMPTS[:1], max_new_tokens=8)
    assert short["generated_tokens"] == 1  # it does stop at once when left alone
    _, timed = answer_prompts(stops_at_once, tokenizer, PROMPTS[:1], max_new_tokens=8, min_new_tokens=8)
    assert timed["generated_tokens"] == timed["decoded_tokens"] == 8
    assert decoding_speed(stops_at_once, tokenizer, PROMPTS, 8, batch_size=2) > 0


def test_left_padding_gives_the_same_answer_alone_and_in_a_batch(chatty, tokenizer):
    side = tokenizer.padding_side
    alone, _ = answer_prompts(chatty, tokenizer, [PROMPTS[0]], max_new_tokens=8)
    # PROMPTS[1] is longer, so PROMPTS[0] is padded in this batch
    batched, _ = answer_prompts(chatty, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    assert batched[0] == alone[0]
    assert tokenizer.padding_side == side  # restored


def test_evaluate_measures_the_model(chatty, tokenizer, tiny_llama):
    heldout = [{"prompt": p, "reference": "3 plus 4 is 7."} for p in PROMPTS]
    result, signal = evaluate("chatty", chatty, tokenizer, heldout, max_new_tokens=4, model_dir=tiny_llama)
    files = [p for p in tiny_llama.iterdir() if p.is_file()]
    assert result.parameters == chatty.num_parameters()
    assert result.size_on_disk_mb == round(sum(p.stat().st_size for p in files) / 2**20, 2)
    weights_mb = sum(p.numel() * p.element_size() for p in chatty.parameters()) / 2**20
    assert result.peak_memory_mb >= round(weights_mb, 1)
    # every generation is kept, and is what the model's signal carries for fidelity
    assert [s["generation"] for s in result.samples] == signal.answers and len(signal.answers) == len(PROMPTS)
    assert set(result.samples[0]) == {"prompt", "reference", "generation", "rougeL", "loops"}
    assert result.perplexity > 1 and len(signal.top1) == len(PROMPTS)
    assert result.fidelity_rougeL is None and result.top1_agreement is None  # no teacher to compare with
    assert evaluate("in memory", chatty, tokenizer, heldout[:1], 2)[0].size_on_disk_mb is None


# ---- comparing ------------------------------------------------------------------------------

def _result(label: str, r1: float, r2: float, rl: float) -> ModelResult:
    return ModelResult(label, {"rouge1": r1, "rouge2": r2, "rougeL": rl}, parameters=1000,
                       size_on_disk_mb=1.0, tokens_per_s=10.0, peak_memory_mb=5.0)


def test_compare_fine_tuning_reports_deltas():
    report = compare([_result("base", 0.2, 0.1, 0.2), _result("tuned", 0.5, 0.25, 0.4)], "fine-tuning")
    assert report["baseline"] == "base" and report["final"] == "tuned"
    assert report["deltas"] == pytest.approx({"rouge1": 0.3, "rouge2": 0.15, "rougeL": 0.2})
    assert report["retained"] is None and report["teacher"] is None


def test_compare_distillation_reports_retained_share_of_the_teacher():
    results = [_result("teacher", 0.4, 0.2, 0.0), _result("before", 0.1, 0.05, 0.0),
               _result("after", 0.3, 0.1, 0.0)]
    report = compare(results, "distillation")
    assert report["deltas"] == pytest.approx({"rouge1": 0.2, "rouge2": 0.05, "rougeL": 0.0})
    # after / teacher; a teacher that scored 0 leaves nothing to retain
    assert report["retained"] == {"rouge1": 0.75, "rouge2": 0.5, "rougeL": None}


def test_show_prints_the_table_with_deltas(capsys):
    report = compare([_result("[org/base]", 0.2, 0.1, 0.2), _result("tuned", 0.5, 0.25, 0.4)], "fine-tuning")
    show(report)
    out = capsys.readouterr().out
    assert "[org/base]" in out  # a label is text, never rich markup
    assert "+0.300" in out and "Δ = tuned minus [org/base]" in out


def test_run_benchmark_writes_benchmark_json(tmp_path, chatty, tokenizer, tiny_llama, tiny_llama_small, qa_file,
                                             capsys):
    from transformers import AutoModelForCausalLM

    # The teacher's own greedy answers are the references, so its ROUGE must come out 1.0
    # and "retained" is the student's score.
    references, _ = answer_prompts(chatty, tokenizer, PROMPTS, max_new_tokens=6)
    rows = [{"prompt": p, "reference": r} for p, r in zip(PROMPTS, references)]
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    cfg = RunConfig(approach="distillation", teacher=str(tiny_llama), student=str(tiny_llama_small),
                    student_layers=None, dataset=str(qa_file), benchmark_samples=3, max_new_tokens=6)
    student = AutoModelForCausalLM.from_pretrained(tiny_llama_small)
    report = run_benchmark(cfg, tmp_path, [("teacher", chatty, tokenizer, tiny_llama),
                                           ("student before", student, tokenizer, tiny_llama_small),
                                           ("student after", student, tokenizer, None)])
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved == report
    assert saved["samples"] == 3 and saved["approach"] == "distillation"
    assert [m["label"] for m in saved["models"]] == ["teacher", "student before", "student after"]
    assert saved["models"][0]["rouge"] == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    after = saved["models"][2]["rouge"]
    assert saved["retained"] == after  # after / 1.0
    assert saved["deltas"] == {m: 0.0 for m in after}  # same weights before and after
    assert "student after" in capsys.readouterr().out


def test_missing_heldout_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="held-out"):
        read_heldout(tmp_path, 10)


def test_save_round_trips(tmp_path):
    report = compare([_result("only", 0.1, 0.0, 0.1)], "fine-tuning")
    assert json.loads(save(report, tmp_path).read_text()) == report
