from __future__ import annotations

import hashlib
import logging
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from hub_server import HubServer

from finetuner import hub
from finetuner.benchmark.comparison import compare, save
from finetuner.benchmark.measure import ModelResult
from finetuner.config import RunConfig
from finetuner.model_card import model_card, write_model_card
from finetuner.ui import UserError

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
REPO = "alice/tiny-tuned"
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja"}
RUN_FILES = {"finetuner-answers.yaml", "benchmark.json", "README.md"}


@pytest.fixture
def online(monkeypatch):
    """conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, and huggingface_hub
    reads it once, at import, into constants.HF_HUB_OFFLINE: unset both."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def server(online):
    with HubServer(token=TOKEN, user="alice") as hub_server:
        yield hub_server


def _report() -> dict:
    def result(label: str, score: float) -> ModelResult:
        return ModelResult(label, {"rouge1": score, "rouge2": score / 2, "rougeL": score}, 170_880, 0.7, 50.0, 3.0)

    return {"approach": "fine-tuning", "samples": 4, "max_new_tokens": 8,
            **compare([result("base", 0.1), result("fine-tuned", 0.4)], "fine-tuning")}


@pytest.fixture
def run_dir(tmp_path, tiny_llama, qa_file) -> tuple[Path, RunConfig]:
    """An output folder laid out as the trainer leaves it, with things that must stay home."""
    out = tmp_path / "run"
    shutil.copytree(tiny_llama, out / "model")
    checkpoint = out / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"optimizer state")
    shutil.copy(tiny_llama / "model.safetensors", checkpoint / "model.safetensors")
    (out / "heldout.jsonl").write_text('{"prompt": "What is 1 plus 1?", "reference": "2"}\n')
    (out / "training_log.json").write_text("[]")
    cfg = RunConfig(model=str(tiny_llama), dataset=str(qa_file), upload=True, hub_repo=REPO)
    (out / "finetuner-answers.yaml").write_text(yaml.safe_dump(cfg.to_answers(), sort_keys=False))
    save(_report(), out)
    write_model_card(cfg, out)
    return out, cfg


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: connecting to it is refused


# ---- which files ----------------------------------------------------------------------------

def test_upload_files_are_the_final_artifacts_only(run_dir):
    out, _ = run_dir
    files = hub.upload_files(out)
    assert {name for _, name in files} == MODEL_FILES | RUN_FILES
    assert all("checkpoint" not in str(path) and path.name != "heldout.jsonl" for path, _ in files)


def test_an_adapter_is_uploaded_when_there_is_no_merged_model(tmp_path):
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"):
        (out / "adapter" / name).write_text("{}")
    (out / "README.md").write_text("---\nlibrary_name: peft\n---\n# card\n")
    files = dict((name, path) for path, name in hub.upload_files(out))
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"}
    assert files["README.md"] == out / "README.md"  # our card, not PEFT's stub


def test_nothing_to_upload_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="neither model/ nor adapter/"):
        hub.upload_files(tmp_path)


# ---- the model card -------------------------------------------------------------------------

def test_model_card_metadata_parses(run_dir, tiny_llama):
    from huggingface_hub import ModelCard

    out, _ = run_dir
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["finetuner", "lora", "text-generation"]
    assert card.data.base_model is None  # a local model has no Hub id to point at
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == \
        {"ROUGE-1": 0.4, "ROUGE-2": 0.2, "ROUGE-L": 0.4}
    assert "AutoModelForCausalLM" in card.text and "| Δ |" in card.text
    assert str(tiny_llama.parent) not in card.content  # no local paths from the user's disk


def test_distilled_adapter_card_names_base_teacher_and_dataset():
    cfg = RunConfig(approach="distillation", student_layers=15, student_training="lora", merge_adapter=False,
                    temperature=3.0, alpha=0.25, hub_repo="alice/small")
    text = model_card(cfg, None, adapter=True)
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert metadata["library_name"] == "peft"
    assert metadata["datasets"] == ["openai/gsm8k"]
    assert metadata["license"] == "apache-2.0"
    assert {"finetuner", "distillation", "text-generation"} <= set(metadata["tags"])
    assert "model-index" not in metadata and "model_name" not in metadata  # not benchmarked
    assert "AutoPeftModelForCausalLM" in text
    assert "15-layer student" in text and "not on the Hub" in text  # its base must be rebuilt
    for setting in ("| temperature | 3.0 |", "| alpha | 0.25 |", "| student_layers | 15 |", "| epochs | 3 |",
                    "| distillation_mode | logits |", "| divergence | forward_kl |"):
        assert setting in text


def test_card_of_a_student_taught_by_written_answers_says_so():
    cfg = RunConfig(approach="distillation", distillation_mode="responses", teacher="org/big-teacher",
                    student="org/small", student_layers=None, long_rows="drop", hub_repo="alice/small")
    text = model_card(cfg, None, adapter=False)
    assert "fine-tuned on answers written by org/big-teacher" in text
    assert "| distillation_mode | responses |" in text and "| long_rows | drop |" in text
    assert "| divergence |" not in text and "| temperature |" not in text  # no logits were matched


def test_hub_model_and_dataset_ids_go_into_the_metadata():
    cfg = RunConfig(model="org/base-model", method="qlora", dataset="org/qa-data", hub_repo="alice/qa")
    metadata = yaml.safe_load(model_card(cfg, _report(), adapter=False).split("---")[1])
    assert metadata["base_model"] == "org/base-model" and metadata["datasets"] == ["org/qa-data"]
    assert "license" not in metadata  # unknown for an arbitrary Hub model
    assert metadata["tags"] == ["finetuner", "qlora", "text-generation"]
    result = metadata["model-index"][0]["results"][0]
    assert result["dataset"]["type"] == "org/qa-data" and result["dataset"]["split"] == "train"


# ---- uploading over HTTP --------------------------------------------------------------------

def test_upload_sends_exactly_the_artifacts_and_never_the_token(run_dir, server, capsys, caplog):
    from huggingface_hub import ModelCard

    out, _ = run_dir
    caplog.set_level(logging.DEBUG)
    url = hub.upload(out, REPO, private=True, token=TOKEN, endpoint=server.url)

    assert url == f"{server.url}/{REPO}"
    repo = server.repos[REPO]
    assert repo.private and len(repo.commits) == 1
    assert set(repo.files) == MODEL_FILES | RUN_FILES
    assert repo.files["model.safetensors"] == (out / "model" / "model.safetensors").read_bytes()
    assert ModelCard(repo.files["README.md"].decode()).data.eval_results
    secret = TOKEN.encode()
    assert not any(secret in content for content in repo.files.values())
    for request in server.requests:
        assert secret not in request.body and TOKEN not in request.path
        assert request.headers["authorization"] == f"Bearer {TOKEN}"  # only ever here
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text


def test_uploading_again_updates_the_existing_repo(run_dir, server):
    out, _ = run_dir
    hub.upload(out, REPO, private=True, token=TOKEN, endpoint=server.url)
    hub.upload(out, REPO, private=True, token=TOKEN, endpoint=server.url)
    assert len(server.repos[REPO].commits) == 2


@pytest.mark.parametrize("case", ["bad token", "foreign namespace", "connection refused", "server error"])
def test_a_failed_upload_is_one_line_with_the_retry_command(case, run_dir, server, capsys, caplog):
    out, _ = run_dir
    repo, token, endpoint = REPO, TOKEN, server.url
    if case == "bad token":
        token = "hf_WrongTokenThatMustNeverLeak987654321"
    elif case == "foreign namespace":
        repo = "bob/his-model"
    elif case == "connection refused":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    else:
        server.fail["commit"] = 500
    before = _snapshot(out)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(UserError) as caught:
        hub.upload(out, repo, private=True, token=token, endpoint=endpoint)

    err = caught.value
    assert "\n" not in err.message
    assert f"python finetune_cli.py --upload-only {out} --set hub_repo={repo}" in err.hint
    assert {"bad token": "401", "foreign namespace": "403", "connection refused": "could not reach",
            "server error": "500"}[case] in err.message
    assert err.__cause__ is None and err.__suppress_context__
    captured = capsys.readouterr()
    for text in (err.message, err.hint, str(err), repr(err), captured.out, captured.err, caplog.text):
        assert token not in text
    assert _snapshot(out) == before  # the local model is untouched
    assert REPO not in server.repos or not server.repos[REPO].files


def test_no_token_is_a_user_error_before_any_request(run_dir, server):
    out, _ = run_dir
    with pytest.raises(UserError, match="no Hugging Face token") as caught:
        hub.upload(out, REPO, private=True, token=None, endpoint=server.url)
    assert "hf auth login" in caught.value.hint and "--upload-only" in caught.value.hint
    assert server.requests == []


def test_a_file_holding_the_token_is_never_sent(run_dir, server):
    out, _ = run_dir
    with (out / "finetuner-answers.yaml").open("a") as answers:
        answers.write(f"hub_token: {TOKEN}\n")
    with pytest.raises(UserError, match="finetuner-answers.yaml contains your Hub token") as caught:
        hub.upload(out, REPO, private=True, token=TOKEN, endpoint=server.url)
    assert TOKEN not in caught.value.message + caught.value.hint
    assert server.requests == []


def test_offline_mode_is_named(run_dir):
    # conftest's HF_HUB_OFFLINE=1 is in force here (no `online` fixture)
    out, _ = run_dir
    with pytest.raises(UserError, match="HF_HUB_OFFLINE") as caught:
        hub.upload(out, REPO, private=True, token=TOKEN, endpoint=f"http://127.0.0.1:{_closed_port()}")
    assert "--upload-only" in caught.value.hint


# ---- the token ------------------------------------------------------------------------------

def test_find_token_prefers_hf_token_then_the_login_file(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub resolved these paths from HF_HOME at import
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    assert hub.find_token() is None
    (tmp_path / "token").write_text("hf_from_login\n")
    assert hub.find_token() == "hf_from_login"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hub.find_token() == "hf_from_env"
