"""Loading models, tokenizers and configs by name: a built-in (a GGUF shipped in a package,
converted once to a cached Hugging Face directory), a local directory, or a Hub id
(`finetuner.sources` tells which). Every problem a user can fix (offline Hub, a typo, an encoder
instead of a causal LM) becomes a UserError with a hint.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from finetuner import sources, ui
from finetuner.ui import UserError
from transformers.utils import logging as transformers_logging

from finetuner.models.precision import Precision, precision_policy
from finetuner.models.quantization import keep_bnb_trainable, quantization_config

# Per-shard "Loading weights" bars from transformers; finetuner shows its own steps.
transformers_logging.disable_progress_bar()

LOCAL_HINT = ("give the path of a local model directory (one with config.json and tokenizer files), "
              f"or use the built-in {next(iter(sources.BUILTIN_MODELS))}")


# ---- where a model lives --------------------------------------------------------------------

def cache_root() -> Path:
    if os.environ.get("FINETUNER_CACHE"):
        return Path(os.environ["FINETUNER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "finetuner"


def _builtin_cache_dir(name: str) -> Path:
    gguf = sources.builtin_model_file(name)
    # A new package version (a different file) gets a new directory instead of a stale copy.
    stamp = hashlib.sha1(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:10]
    return cache_root() / "models" / f"{name}-{stamp}"


def builtin_converted(name: str) -> bool:
    """Whether the built-in `name` is converted already (its first use converts it, ~20 s)."""
    return (_builtin_cache_dir(name) / "config.json").is_file()


def resolve_model_path(name: str) -> str:
    """What to hand to from_pretrained: a directory (built-in, local) or a Hub id."""
    kind = sources.model_kind(name)
    if kind != "builtin" and (problem := sources.check_model(name)):
        raise UserError(problem, hint=LOCAL_HINT)
    if kind == "hub":
        return name
    if kind == "local":
        return str(Path(name).expanduser())
    target = _builtin_cache_dir(name)
    if not (target / "config.json").is_file():
        _convert_builtin(name, target)
    return str(target)


@contextlib.contextmanager
def _tqdm_only_on_a_terminal():
    """transformers' GGUF conversion draws a tqdm bar unconditionally; piped into a log it becomes
    carriage-return spam. tqdm's disable=None turns the bar off when stderr is not a terminal."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=None)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _convert_builtin(name: str, target: Path) -> None:
    """Dequantise the built-in GGUF into a normal, saveable model directory, atomically."""
    from transformers import GgufConfig

    gguf = sources.builtin_model_file(name)
    ui.step(f"Preparing the built-in {name} (first use only, ~20 s)")
    # `gguf_file=` alone loads a model that save_pretrained refuses; dequantize=True gives a
    # plain fp32 model (Q4_1 blocks dequantise exactly in fp32, so fp32 is saved, not bf16).
    with _tqdm_only_on_a_terminal():
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        raise UserError(f"can't write the model cache at {target.parent}: {exc.strerror or exc}",
                        hint="set FINETUNER_CACHE to a writable directory") from exc
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists() and not (target / "config.json").is_file():
            shutil.rmtree(target)  # damaged by hand: never trust half a cache
        # A rename is atomic: readers see no directory or a complete one, never half a cache.
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (target / "config.json").is_file():
            return  # another process finished the same conversion first
        raise


# ---- errors from the Hub and from model directories ------------------------------------------

def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain


def _is_offline(chain: list[BaseException]) -> bool:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    # huggingface_hub turns an unreachable Hub into LocalEntryNotFoundError when nothing is cached;
    # the network errors themselves come from its HTTP client (httpx2 in 2.4), matched by name.
    network = {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError"}
    return constants.HF_HUB_OFFLINE or any(
        isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, TimeoutError))
        or type(e).__name__ in network for e in chain)


def _load_error(name: str, what: str, exc: Exception) -> UserError:
    """Turn a from_pretrained failure into something the user can act on."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = _causes(exc)
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if sources.model_kind(name) != "hub":
        return UserError(f"couldn't load the {what} from {name}: {first_line}",
                         hint="the directory should hold a saved Hugging Face model "
                              "(config.json, weights and tokenizer files)")
    if any(isinstance(e, GatedRepoError) for e in chain):
        return UserError(f"{name} is a gated model on the Hugging Face Hub",
                         hint=f"accept its terms at https://huggingface.co/{name}, then run `hf auth login`")
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return UserError(f"{name} was not found on the Hugging Face Hub",
                         hint="check the spelling (organisation/model); a private model needs "
                              f"`hf auth login`; or {LOCAL_HINT}")
    if _is_offline(chain):
        return UserError(f"can't download {name}: the Hugging Face Hub is offline or unreachable, "
                         "and it is not in the local cache",
                         hint=f"connect to the internet (unset HF_HUB_OFFLINE), or {LOCAL_HINT}")
    return UserError(f"couldn't load the {what} of {name}: {first_line}", hint=LOCAL_HINT)


# Transformers wraps Hub failures in OSError; a broken local config surfaces as ValueError.
_LOAD_ERRORS = (OSError, ValueError)


# ---- tokenizers -------------------------------------------------------------------------------

def load_tokenizer(name: str):
    """The model's tokenizer, with a pad token (the EOS token when it has none)."""
    try:
        tokenizer = _builtin_tokenizer(name) if sources.model_kind(name) == "builtin" else \
            AutoTokenizer.from_pretrained(resolve_model_path(name))
    except UserError:
        raise
    except _LOAD_ERRORS as exc:
        raise _load_error(name, "tokenizer", exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _builtin_tokenizer(name: str):
    cached = _builtin_cache_dir(name)
    if (cached / "config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    # Converting the weights takes ~20 s, and the tokenizer check should fail fast, before any
    # weights are touched: read the tokenizer alone.
    gguf = sources.builtin_model_file(name)
    return _without_weights(name, "tokenizer", AutoTokenizer.from_pretrained,
                            lambda: AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))


@functools.lru_cache(maxsize=None)
def _gguf_config(name: str):
    """The built-in's config before its conversion, once a process (the plan asks for it several times)."""
    gguf = sources.builtin_model_file(name)
    return _without_weights(name, "config", AutoConfig.from_pretrained,
                            lambda: AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name))


def _without_weights(name: str, what: str, load, parse):
    """The built-in's config or tokenizer before its first conversion. Parsing either from the GGUF
    takes ~4 s, so the first parse is saved (kilobytes) beside the model cache and every later check,
    in any process, loads that copy."""
    converted = _builtin_cache_dir(name)
    saved = converted.with_name(f"{converted.name}.{what}")
    if saved.is_dir():
        try:
            return load(saved)
        except _LOAD_ERRORS:
            pass  # damaged by hand: parse the GGUF again
    value = parse()
    staging = None
    try:
        saved.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{saved.name}-", dir=saved.parent))
        value.save_pretrained(staging)
        os.rename(staging, saved)  # atomic: readers see no copy or a whole one
    except OSError:  # a read-only cache, or another process saved it first: the parsed value serves
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return value


def load_config(name: str):
    """The model's config, checked to be a causal LM; reads no weights."""
    try:
        if sources.model_kind(name) == "builtin" and not (_builtin_cache_dir(name) / "config.json").is_file():
            config = copy.deepcopy(_gguf_config(name))
        else:
            config = AutoConfig.from_pretrained(resolve_model_path(name))
    except UserError:
        raise
    except _LOAD_ERRORS as exc:
        raise _load_error(name, "config", exc) from exc
    _check_causal_lm(name, config)
    return config


def _check_causal_lm(name: str, config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    # Encoders such as BERT are registered for causal LM too (as decoders); their checkpoints
    # say is_decoder=False. In transformers 5 only such encoder configs have `is_decoder`.
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or getattr(config, "is_decoder", True) is False:
        arch = ", ".join(config.architectures or [config.model_type])
        raise UserError(f"{name} is a {arch} model, not a causal (text-generating) language model",
                        hint="choose a decoder model such as Llama, Qwen, Mistral, Phi or GPT-2")


def load_model(name: str, dtype: torch.dtype | None = None, quantization: str | None = None,
               for_training: bool = True):
    """A causal LM: fp32 by default (transformers 5 would otherwise pick the checkpoint's dtype)."""
    path = resolve_model_path(name)
    kwargs: dict = {"dtype": dtype or torch.float32, "config": load_config(name)}
    if quantization:
        kwargs["quantization_config"] = quantization_config(quantization, precision_policy().teacher_dtype)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}  # bnb quantises on placement
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except UserError:
        raise
    except _LOAD_ERRORS as exc:
        raise _load_error(name, "model", exc) from exc
    if quantization == "4bit":
        keep_bnb_trainable(model)
    if for_training:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def load_teacher(name: str, precision: Precision, quantization: str | None = None):
    """The teacher in half precision (or 8/4-bit when asked, never silently), frozen, on the policy's device."""
    model = load_model(name, dtype=precision.teacher_dtype, quantization=quantization, for_training=False)
    return model if quantization else model.to(precision.device)  # bnb places quantised weights itself


# ---- derived students -----------------------------------------------------------------------
def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameters, tied weights counted once (4-bit weights counted unpacked)."""
    if hasattr(model, "num_parameters"):
        return model.num_parameters(only_trainable=trainable_only)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

