"""The upload to the Hugging Face Hub (the card it sends is written by model_card.py).

The upload sends exactly the final artifacts (`upload_files`) in one commit, and only reads
local files: a failed upload leaves the run's output as it was, and the hint says how to retry
the upload alone. The token is never written anywhere and never appears in an error.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from finetuner import artifacts, ui
from finetuner.benchmark.comparison import REPORT_FILE
from finetuner.model_card import CARD_FILE, write_model_card
from finetuner.ui import UserError
from finetuner.wizard.answers import ANSWERS_FILE

# Never uploaded even if they sit in the model folder: training state, not the model.
_SKIPPED_NAMES = {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", CARD_FILE}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def find_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def upload_command(out_dir: str | Path, repo_id: str | None) -> str:
    """The command that uploads a finished run (again, after a failed upload)."""
    repo = repo_id or "USER/MODEL"
    return f"python finetune_cli.py --upload-only {shlex.quote(str(out_dir))} --set hub_repo={shlex.quote(repo)}"


# ---- what to upload -------------------------------------------------------------------------

def upload_files(out_dir: str | Path) -> list[tuple[Path, str]]:
    """(local path, path in repo) of the final artifacts: the model (or, without one, the adapter)
    with its tokenizer and config, then the answers, the benchmark and the card. Never
    checkpoints, optimizer state or the held-out data."""
    out = Path(out_dir)
    weights = next((out / name for name in (artifacts.MODEL_DIR, artifacts.ADAPTER_DIR) if (out / name).is_dir()),
                   None)
    if weights is None:
        raise UserError(f"nothing to upload: {out} has neither model/ nor adapter/",
                        hint="train first, or point --upload-only at a finished run's output folder")
    files = [(path, path.relative_to(weights).as_posix())
             for path in sorted(weights.rglob("*")) if path.is_file() and _is_model_file(path.relative_to(weights))]
    # The card in OUT replaces any stub a library wrote next to the weights (PEFT writes one).
    files += [(out / name, name) for name in (ANSWERS_FILE, REPORT_FILE, CARD_FILE)
              if (out / name).is_file()]
    return files


def _is_model_file(relative: Path) -> bool:
    hidden = any(part.startswith(".") for part in relative.parts)
    checkpoint = any(part.startswith("checkpoint-") for part in relative.parts)
    return not hidden and not checkpoint and relative.name not in _SKIPPED_NAMES \
        and not relative.name.startswith("rng_state")


# ---- the upload -----------------------------------------------------------------------------

def upload(out_dir: str | Path, repo_id: str, private: bool, token: str | None,
           endpoint: str | None = None) -> str:
    """Create `repo_id` if needed and commit exactly `upload_files(out_dir)`. Returns the repo URL."""
    out = Path(out_dir)
    retry = upload_command(out, repo_id)
    if not token:
        raise UserError(f"no Hugging Face token found, so {repo_id} was not uploaded",
                        hint=f"log in with `hf auth login` (or set HF_TOKEN), then run: {retry}")
    files = upload_files(out)
    _refuse_token_in_files(files, token, retry)

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        # create_commit, not upload_folder: the files come from two folders, and upload_folder's
        # resumable mode writes a cache (.cache/huggingface) into the folder it uploads.
        api.create_commit(repo_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                    for path, name in files],
                          commit_message="Upload model trained with finetuner")
    except Exception as err:  # noqa: BLE001 - sorted into user errors below, others re-raised
        user_error = _explain(err, repo_id, api.endpoint, token, retry)
        if user_error is None:
            raise
        # `from None`: the cause's request objects carry the Authorization header.
        raise user_error from None
    return str(url)


def _refuse_token_in_files(files: list[tuple[Path, str]], token: str, retry: str) -> None:
    """A last guard: no uploaded text file may contain the token (weights are not scanned)."""
    needle = token.encode()
    for path, name in files:
        if not path.name.endswith(_WEIGHT_SUFFIXES) and needle in path.read_bytes():
            raise UserError(f"{name} contains your Hub token, so nothing was uploaded",
                            hint=f"remove the token from {path}, then run: {retry}")


def _explain(err: Exception, repo_id: str, endpoint: str, token: str, retry: str) -> UserError | None:
    """A one-line UserError for a failure the user can fix, or None for a bug."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return UserError(f"upload to {repo_id} skipped: HF_HUB_OFFLINE is set",
                         hint=f"unset HF_HUB_OFFLINE, then run: {retry}")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            message = f"the Hub rejected your token (401) while uploading to {repo_id}"
            hint = f"check the token (`hf auth login --force`, or HF_TOKEN), then run: {retry}"
        elif status == 403:
            message = f"your token may not write to {repo_id} (403): the namespace belongs to someone else " \
                      f"or the token is read-only"
            hint = f"use a repo under your own name or a write token, then run: {retry}"
        else:
            detail = _scrub(err.server_message or "", token).splitlines()
            message = f"the Hub answered {status} while uploading to {repo_id}" + (f": {detail[0]}" if detail else "")
            hint = f"run: {retry}"
        return UserError(message, hint=hint)
    if isinstance(err, (httpx2.TransportError, ConnectionError)):
        return UserError(f"could not reach {endpoint} to upload {repo_id} ({type(err).__name__})",
                         hint=f"check your network connection, then run: {retry}")
    return None


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def publish(cfg, out_dir: str | Path, token: str | None = None) -> str:
    """A run's last step: write the model card, then upload and say where. Returns the repo URL."""
    write_model_card(cfg, out_dir)
    url = upload(out_dir, cfg.hub_repo, cfg.hub_private, token or find_token())
    ui.success(f"Uploaded to {url}")
    return url
