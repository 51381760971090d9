"""The resolve loop and answers files. `ask` here is a scripted person at the keyboard."""

import pytest

from finetuner.config import RunConfig
from finetuner.ui import UserError
from finetuner.wizard.answers import load_answers, parse_overrides, save_answers
from finetuner.wizard.resolve import resolve


def scripted(replies: dict):
    """A person who answers some questions and presses Enter (takes the default) on the rest."""
    asked = []

    def ask(question, default, answers):
        asked.append(question.key)
        return replies.get(question.key, default)

    ask.asked = asked
    return ask


def test_replay_of_a_complete_file_asks_nothing(tmp_path):
    original = RunConfig(approach="distillation", output_dir=str(tmp_path / "o"), epochs=1).to_answers()
    ask = scripted({})
    answers, _ = resolve(original, ask)
    assert ask.asked == []
    assert RunConfig(**answers) == RunConfig(approach="distillation", output_dir=str(tmp_path / "o"), epochs=1)


def test_partial_file_on_a_terminal_asks_only_the_gaps():
    ask = scripted({"epochs": "2"})
    answers, _ = resolve({"approach": "fine-tuning", "model": "smollm2-135m-instruct", "method": "lora"}, ask)
    assert "approach" not in ask.asked and "model" not in ask.asked
    assert "epochs" in ask.asked and answers["epochs"] == 2


def test_typed_answers_are_validated_like_file_answers():
    replies = iter(["1.5", "0.3"])

    def ask(question, default, answers):
        return next(replies) if question.key == "alpha" else default

    answers, _ = resolve({"approach": "distillation"}, ask)
    assert answers["alpha"] == 0.3


def test_invalid_file_value_on_a_terminal_is_asked_again():
    ask = scripted({"alpha": "0.25"})
    answers, _ = resolve({"approach": "distillation", "alpha": 7}, ask)
    assert "alpha" in ask.asked and answers["alpha"] == 0.25


def test_without_a_terminal_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as caught:
        resolve({"approach": "distillation", "temperature": 0, "alpha": 2, "epochs": "x", "colour": "red"}, None)
    details = "\n".join(caught.value.details)
    for fragment in ("temperature: must be greater than 0", "alpha: must be between 0 and 1",
                     "epochs: expected a whole number", "colour: unknown setting", "output_dir: missing"):
        assert fragment in details


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(UserError) as caught:
        resolve({"temprature": 2}, None, use_defaults=True)
    assert "did you mean 'temperature'" in "\n".join(caught.value.details)


def test_defaults_fill_everything_without_a_terminal():
    answers, _ = resolve({"approach": "distillation"}, None, use_defaults=True)
    assert RunConfig(**answers).student_layers == 15


def test_upload_without_a_token_is_an_error_without_a_terminal(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError) as caught:
        resolve({"upload": True, "hub_repo": "me/model"}, None, use_defaults=True, token_found=lambda: False)
    assert "no Hugging Face token" in "\n".join(caught.value.details)


def test_token_is_asked_when_missing_and_never_saved(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ask = scripted({"hub_token": "hf_secret_value", "upload": True, "hub_repo": "me/model"})
    answers, secrets = resolve({}, ask, token_found=lambda: False)
    assert secrets == {"hub_token": "hf_secret_value"}
    path = save_answers(tmp_path / "a.yaml", {**answers, **secrets})
    assert "hf_secret_value" not in path.read_text()


def test_answers_file_round_trips(tmp_path):
    answers = RunConfig(approach="distillation", alpha=0.25, student_layers=None, student="x/y").to_answers()
    path = save_answers(tmp_path / "sub" / "answers.yaml", answers)
    assert load_answers(path) == answers


@pytest.mark.parametrize("content,fragment", [
    ("approach: [unclosed", "not valid YAML"), ("- a\n- b\n", "must be a mapping"),
])
def test_malformed_answers_files_are_user_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=fragment):
        load_answers(path)


def test_missing_answers_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_answers(tmp_path / "nope.yaml")


def test_overrides_parse_and_reject_garbage():
    assert parse_overrides(["epochs=2", "hub_repo=me/x"]) == {"epochs": "2", "hub_repo": "me/x"}
    with pytest.raises(UserError):
        parse_overrides(["epochs"])


def test_unknown_key_on_a_terminal_is_reported_before_any_question():
    ask = scripted({})
    with pytest.raises(UserError) as caught:
        resolve({"approach": "distillation", "temprature": 2}, ask)
    assert ask.asked == [], "asked questions whose answers the unknown key would throw away"
    assert "did you mean 'temperature'" in "\n".join(caught.value.details)


def test_offline_typo_of_a_model_id_is_refused_with_a_suggestion(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError) as caught:
        resolve({"model": "smollm2-135m-instructx"}, None, use_defaults=True)
    details = "\n".join(caught.value.details)
    assert "model: " in details and "HF_HUB_OFFLINE" in details and "did you mean 'smollm2-135m-instruct'" in details


def test_upload_while_offline_is_refused_at_the_question(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ask = scripted({"upload": True, "hub_repo": "me/model"})
    replies = iter([True, False])

    def person(question, default, answers):
        return next(replies) if question.key == "upload" else ask(question, default, answers)

    answers, _ = resolve({}, person, token_found=lambda: True)
    assert answers["upload"] is False  # the first "yes" was refused at the question, then answered again
    with pytest.raises(UserError) as caught:
        resolve({"upload": True, "hub_repo": "me/model"}, None, use_defaults=True)
    assert "HF_HUB_OFFLINE" in "\n".join(caught.value.details)


def test_too_many_student_layers_are_refused_at_the_question():
    replies = {"student_layers": iter(["31", "10"])}
    asked = []

    def ask(question, default, answers):
        asked.append(question.key)
        return next(replies[question.key]) if question.key in replies else default

    answers, _ = resolve({"approach": "distillation"}, ask)
    first = asked.index("student_layers")
    assert asked[first + 1] == "student_layers", f"re-asked only later: {asked}"
    assert answers["student_layers"] == 10


def test_plain_text_dataset_skips_the_benchmark_question_and_says_why(tmp_path, capsys):
    from finetuner.config import applies

    text = tmp_path / "notes.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 20)
    ask = scripted({"dataset": str(text)})
    answers, _ = resolve({"approach": "fine-tuning"}, ask)
    assert "benchmark" not in ask.asked and "benchmark" not in answers
    assert not applies("benchmark", RunConfig(dataset=str(text)))
    assert "plain text" in capsys.readouterr().out


# ---- checks at the question --------------------------------------------------------------------

def person(replies: dict):
    """A person who types `replies[key]` in turn (a list each) and presses Enter on the rest."""
    asked, pending = [], {key: list(values) for key, values in replies.items()}

    def ask(question, default, answers):
        asked.append(question.key)
        return pending[question.key].pop(0) if pending.get(question.key) else default

    ask.asked = asked
    return ask


def test_an_offline_hub_dataset_typo_is_refused_at_the_dataset_question(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ask = person({"dataset": ["128", "gsm8k"]})
    answers, _ = resolve({"approach": "fine-tuning"}, ask)
    assert answers["dataset"] == "gsm8k"
    first = ask.asked.index("dataset")
    assert ask.asked[first + 1] == "dataset", f"the typo was taken for a Hub id: {ask.asked}"
    assert "dataset_config" not in ask.asked and "the Hub is offline" in capsys.readouterr().out


@pytest.mark.parametrize("make,fragment", [
    ("model", "is a model folder"),
    ("mixed", "mixes .jsonl, .txt files"),
])
def test_a_dataset_folder_that_cant_be_read_as_one_is_refused_before_anything_loads(tmp_path, tiny_llama, make,
                                                                                     fragment):
    folder = tiny_llama
    if make == "mixed":
        folder = tmp_path / "mixed"
        folder.mkdir()
        (folder / "a.jsonl").write_text('{"question": "q", "answer": "a"}\n')
        (folder / "notes.txt").write_text("some text\n")
    with pytest.raises(UserError) as caught:
        resolve({"approach": "fine-tuning", "dataset": str(folder), "output_dir": str(tmp_path / "o")}, None,
                use_defaults=True)
    assert fragment in "\n".join(caught.value.details)


def test_logits_with_an_api_teacher_is_refused_at_the_mode_question_and_responses_asks_its_questions():
    ask = person({"teacher_api_base": ["http://127.0.0.1:9/v1"], "teacher": ["remote-model"],
                  "distillation_mode": ["logits", "responses"]})
    answers, _ = resolve({"approach": "distillation"}, ask)
    first = ask.asked.index("distillation_mode")
    assert ask.asked[first + 1] == "distillation_mode", f"logits was accepted at its question: {ask.asked}"
    assert answers["distillation_mode"] == "responses"
    for key in ("generation_max_new_tokens", "generation_temperature", "generation_token_budget"):
        assert key in ask.asked, f"{key} never asked: {ask.asked}"


def test_logits_with_a_student_of_another_tokenizer_is_refused_at_the_question(tmp_path, tiny_llama):
    from conftest import build_llama, train_tokenizer

    other = build_llama(tmp_path / "other", train_tokenizer(tmp_path / "tok", vocab_size=300), layers=2)
    with pytest.raises(UserError) as caught:
        resolve({"approach": "distillation", "teacher": str(tiny_llama), "student": str(other),
                 "student_layers": None, "distillation_mode": "hybrid", "output_dir": str(tmp_path / "o")}, None,
                use_defaults=True)
    details = "\n".join(caught.value.details)
    assert "distillation_mode: hybrid" in details and "tokenizers differ" in details and "responses" in details


# ---- --set and the wording of the questions ------------------------------------------------------

def test_lr_is_taken_for_learning_rate_and_one_problem_needs_fixing():
    with pytest.raises(UserError) as caught:
        resolve({"lr": 1e-4}, None, use_defaults=True)
    assert "did you mean 'learning_rate'" in "\n".join(caught.value.details)
    assert caught.value.message == "1 setting needs fixing"


def test_a_set_that_does_not_apply_says_so(capsys):
    resolve({"approach": "fine-tuning", "alpha": "0.3", "output_dir": "o"}, None, use_defaults=True,
            from_set=frozenset({"alpha"}))
    assert "--set alpha: does not apply to this run" in capsys.readouterr().out


def test_a_bad_set_value_is_asked_again_offering_the_files_value(tmp_path, monkeypatch, capsys):
    from finetuner import ui
    from finetuner.wizard import gather

    path = save_answers(tmp_path / "a.yaml", RunConfig(approach="fine-tuning", epochs=2,
                                                       output_dir=str(tmp_path / "o")).to_answers())
    offered = {}

    def ask(question, default, answers):
        offered[question.key] = default
        return default

    monkeypatch.setattr(ui, "can_ask", lambda: True)
    monkeypatch.setattr(gather, "ask", ask)
    cfg, _ = gather.gather(gather.AnswerOptions(answers_file=str(path), overrides=("epochs=three",)))
    assert offered == {"epochs": 2} and cfg.epochs == 2
    assert "epochs = 'three' from --set" in capsys.readouterr().out


def test_an_optional_answer_offered_again_says_how_to_clear_it(monkeypatch):
    from finetuner import ui
    from finetuner.wizard.prompts import ask
    from finetuner.wizard.questions import QUESTIONS

    shown = []
    monkeypatch.setattr(ui, "text", lambda message, default=None, paths=False: shown.append(message) or "none")
    question = next(q for q in QUESTIONS if q.key == "teacher_api_base")
    assert ask(question, "http://127.0.0.1:8000/v1", {}) == "none"
    assert "none clears it" in shown[0] and "Enter: a local teacher" not in shown[0]
    ask(question, None, {})
    assert "(Enter: a local teacher)" in shown[1]
