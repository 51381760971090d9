import pytest

from finetuner.config import RunConfig, coerce, default_for
from finetuner.config_checks import check_field, cross_check, warnings_for


def test_defaults_are_the_documented_ones():
    cfg = RunConfig()
    assert (cfg.temperature, cfg.alpha, cfg.epochs, cfg.batch_size) == (2.0, 0.5, 3, 4)
    assert (cfg.learning_rate, cfg.gradient_accumulation) == (2e-4, 4)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 32, 0.1)
    assert (cfg.adalora_init_r, cfg.adalora_target_r) == (12, 8)
    assert (cfg.max_samples, cfg.max_length) == (1000, 512)
    assert (cfg.model, cfg.dataset) == ("smollm2-135m-instruct", "gsm8k")


def test_qlora_gets_a_larger_adapter_by_default():
    assert default_for("lora_r", {"approach": "fine-tuning", "method": "qlora"}) == 16
    assert default_for("lora_alpha", {"approach": "fine-tuning", "method": "qlora"}) == 64
    assert default_for("lora_r", {"approach": "fine-tuning", "method": "lora"}) == 8


@pytest.mark.parametrize("key,raw,expected", [
    ("epochs", "3", 3), ("epochs", 3.0, 3), ("learning_rate", "2e-4", 2e-4), ("learning_rate", 1, 1.0),
    ("benchmark", "no", False), ("benchmark", True, True), ("student_layers", "null", None),
    ("student_layers", None, None), ("dataset_config", "main", "main"),
])
def test_coerce_accepts_sensible_spellings(key, raw, expected):
    assert coerce(key, raw) == expected


@pytest.mark.parametrize("key,raw", [("epochs", "three"), ("epochs", 2.5), ("epochs", True),
                                     ("benchmark", "maybe"), ("temperature", [1]), ("model", "")])
def test_coerce_rejects_wrong_types(key, raw):
    with pytest.raises(ValueError):
        coerce(key, raw)


@pytest.mark.parametrize("key,value,fragment", [
    ("temperature", 0.0, "greater than 0"), ("temperature", -1.0, "greater than 0"),
    ("alpha", 1.5, "between 0 and 1"), ("alpha", -0.1, "between 0 and 1"),
    ("epochs", 0, "at least 1"), ("batch_size", 0, "at least 1"),
    ("learning_rate", 0.0, "between 0 and 1"), ("learning_rate", 1.0, "between 0 and 1"),
    ("method", "full", "one of"), ("hub_repo", "no-slash", "username/model-name"),
    ("dataset", "missing.jsonl", "no such file"), ("dataset", "data.xlsx", "unsupported file type"),
])
def test_out_of_range_values_are_named(key, value, fragment):
    assert fragment in check_field(key, value)


def test_edges_of_ranges_are_allowed():
    assert check_field("alpha", 0.0) is None and check_field("alpha", 1.0) is None
    assert check_field("temperature", 0.01) is None


def test_student_equal_to_teacher_needs_fewer_layers():
    problems = cross_check({"approach": "distillation", "teacher": "a/b", "student": "a/b", "student_layers": None})
    assert problems and problems[0].startswith("student_layers:")


def test_config_refuses_invalid_values():
    with pytest.raises(ValueError, match="alpha"):
        RunConfig(alpha=2.0, approach="distillation")


def test_temperature_outside_usual_range_warns():
    assert warnings_for(RunConfig(approach="distillation", temperature=8.0))
    assert not warnings_for(RunConfig(approach="distillation", temperature=2.0))


def test_answers_hold_only_what_applies():
    fine = RunConfig().to_answers()
    assert "temperature" not in fine and "teacher" not in fine and "lora_r" in fine
    distill = RunConfig(approach="distillation").to_answers()
    assert "method" not in distill and "lora_r" not in distill and distill["temperature"] == 2.0
