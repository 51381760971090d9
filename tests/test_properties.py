"""Arbitrary answers files and keystrokes: the only outcomes are a valid RunConfig or a UserError."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetuner.config import FIELD_NAMES, RunConfig
from finetuner.ui import UserError
from finetuner.wizard.answers import load_answers
from finetuner.wizard.resolve import resolve

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["lora", "qlora", "distillation", "4bit", "gsm8k",
                                                           "null", "1e-4", "0.5", "true"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10))


def outcome(given_answers, ask=None, use_defaults=True):
    try:
        answers, _ = resolve(given_answers, ask, use_defaults=use_defaults)
    except UserError as err:
        assert err.message and all(isinstance(d, str) for d in err.details)
        return None
    return RunConfig(**answers)  # must construct: resolve never returns something invalid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=8), st.booleans())
def test_any_answers_mapping_gives_a_config_or_a_user_error(given_answers, use_defaults):
    given_answers.pop("output_dir", None)  # keep the filesystem out of it
    outcome({**given_answers, "output_dir": "unused-out"}, use_defaults=use_defaults)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_answers_file_bytes_load_or_fail_cleanly(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("answers") / "a.yaml"
    path.write_bytes(content)
    try:
        data = load_answers(path)
    except UserError:
        return
    assert isinstance(data, dict)
    try:
        resolve({**data, "output_dir": "unused-out"}, None, use_defaults=True)
    except UserError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["", "0", "-1", "2e-4", "yes", "1.5", "lora"])),
                min_size=1, max_size=40))
def test_any_typed_answers_end_valid(keystrokes):
    """A person typing anything: invalid entries are asked again, so the end result is valid."""
    typed = iter(keystrokes)

    def ask(question, default, answers):
        if question.key == "output_dir":
            return "unused-out"
        if question.kind == "select":
            return next(typed, None) or default  # a select can only produce one of its values
        return next(typed, default)  # after the script runs out the person presses Enter

    try:
        answers, _ = resolve({}, ask)
    except UserError:
        return
    RunConfig(**answers)


def test_yaml_written_by_a_user_with_odd_but_valid_spellings(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # x/y is a Hub id: offline, it is refused at once
    text = "approach: distillation\nalpha: '0.3'\nepochs: 2.0\nbenchmark: 'no'\nstudent_layers: ~\nstudent: x/y\n"
    answers, _ = resolve({**yaml.safe_load(text), "output_dir": "o"}, None, use_defaults=True)
    cfg = RunConfig(**answers)
    assert (cfg.alpha, cfg.epochs, cfg.benchmark, cfg.student_layers) == (0.3, 2, False, None)
