"""Loading models and tokenizers, the precision policy, and students derived from a teacher.

A model name is a built-in (a GGUF shipped in a package, converted once to a cached Hugging Face
directory), a local directory, or a Hub id; `finetuner.sources` tells which. Every problem a user
can fix (offline Hub, a typo, an encoder instead of a causal LM, mismatched tokenizers) becomes a
UserError with a hint. Cheap checks (tokenizers, configs) come before any weights load.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from finetuner import sources, ui
from finetuner.quantization import keep_bnb_trainable, quantization_config
from finetuner.ui import UserError

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
    # Reading just the tokenizer from the GGUF takes ~4 s; converting the weights takes ~20 s,
    # and the tokenizer check should fail fast, before any weights are touched.
    gguf = sources.builtin_model_file(name)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def check_tokenizers_match(teacher_tok, student_tok) -> int:
    """The vocabulary size teacher and student share, for slicing logits before the KL term.

    The tokenizers must agree on every shared id and on the special tokens. One may have extra
    ids after the shared range only when they are added tokens (padding/reserved entries), since
    extra BPE merges would split ordinary text differently.
    """
    teacher_vocab, student_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    shared = min(_vocab_end(teacher_vocab), _vocab_end(student_vocab))
    problems = _special_token_differences(teacher_tok, student_tok)
    by_id = [{i: t for t, i in vocab.items() if i < shared} for vocab in (teacher_vocab, student_vocab)]
    differing = [i for i in range(shared) if by_id[0].get(i) != by_id[1].get(i)]
    if differing:
        problems.append(f"{len(differing)} of the first {shared} token ids map to different tokens "
                        f"(first at id {differing[0]}: {by_id[0].get(differing[0])!r} vs "
                        f"{by_id[1].get(differing[0])!r})")
    for role, tok, vocab in (("teacher", teacher_tok, teacher_vocab), ("student", student_tok, student_vocab)):
        added = {t.content for t in tok.added_tokens_decoder.values()}
        extra = [t for t, i in vocab.items() if i >= shared and t not in added]
        if extra:
            problems.append(f"the {role} has {len(extra)} regular tokens beyond id {shared - 1} "
                            f"(e.g. {extra[0]!r})")
    if problems:
        raise UserError("the teacher and student tokenizers differ, so the student can't learn the "
                        "teacher's token probabilities", details=problems,
                        hint="use distillation_mode responses (the teacher writes answers; any tokenizer), "
                             "pick a student from the teacher's family, or derive one with student_layers")
    return shared


def _vocab_end(vocab: dict[str, int]) -> int:
    return max(vocab.values()) + 1


def _special_token_differences(a, b) -> list[str]:
    # Pad is left out: we set it to EOS when a tokenizer has none, and it never reaches the loss.
    return [f"{attr}: {getattr(a, attr)!r} vs {getattr(b, attr)!r}"
            for attr in ("bos_token", "eos_token", "unk_token") if getattr(a, attr) != getattr(b, attr)]


# ---- configs (no weights) --------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    layers: int
    hidden_size: int
    vocab_size: int


def load_config(name: str):
    """The model's config, checked to be a causal LM; reads no weights."""
    try:
        if sources.model_kind(name) == "builtin" and not (_builtin_cache_dir(name) / "config.json").is_file():
            gguf = sources.builtin_model_file(name)
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
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


def layer_info(name: str) -> ModelInfo:
    """Size facts from the config alone, to check a plan before loading weights."""
    config = load_config(name)
    return ModelInfo(architecture=(config.architectures or [config.model_type])[0],
                     layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                     vocab_size=config.vocab_size)


def check_student_plan(teacher: str, student: str, student_layers: int | None) -> list[str]:
    """Raise for an impossible student, return warnings for an odd one (configs only).

    With `student_layers`, the student is derived from `student` by keeping that many layers.
    """
    base = layer_info(student)
    if student_layers is not None:
        if not 1 <= student_layers <= base.layers:
            raise UserError(f"student_layers must be between 1 and {base.layers} ({student} has "
                            f"{base.layers} layers), got {student_layers}")
        if student_layers == base.layers:
            return [f"student_layers {student_layers} keeps every layer: the student starts as a full copy"]
        return []
    big = layer_info(teacher)
    if base.layers >= big.layers and base.hidden_size >= big.hidden_size:
        return [f"the student ({base.layers} layers, width {base.hidden_size}) is not smaller than "
                f"the teacher ({big.layers} layers, width {big.hidden_size})"]
    return []


# ---- precision ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    device: str
    teacher_dtype: torch.dtype
    bf16: bool  # Trainer mixed precision (student keeps fp32 master weights)
    fp16: bool


# FINETUNER_CPU_DTYPE=bf16|fp32 overrides the measurement (both ranks of a run should agree).
CPU_DTYPE_ENV = "FINETUNER_CPU_DTYPE"


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster this CPU multiplies in bf16 than in fp32, timed on a layer-sized matmul.

    CPUs differ by 8x here: about 4x where the cores have bf16 units that oneDNN uses (AMD Zen 4,
    Intel AMX), about 0.5x where torch reports plain AVX512 and bf16 is converted in software.
    """
    import time

    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = {}
    for x, y in pairs.values():
        x @ y  # the first call picks a kernel
    for _ in range(7):  # alternating, so another process's load weighs on both alike; the best of each
        for dtype, (x, y) in pairs.items():
            start = time.perf_counter()
            x @ y
            best[dtype] = min(best.get(dtype, math.inf), time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def _forced_cpu_dtype() -> str | None:
    forced = os.environ.get(CPU_DTYPE_ENV, "").strip().lower()
    return forced if forced in ("bf16", "fp32") else None


def cpu_uses_bf16() -> bool:
    forced = _forced_cpu_dtype()
    return forced == "bf16" if forced else cpu_bf16_speedup() > 1.0


def cpu_precision_reason() -> str:
    """The plan's line on how this CPU computes, and why."""
    dtype = "bf16 autocast, teacher in bf16" if cpu_uses_bf16() else "fp32"
    if _forced_cpu_dtype():
        return f"{dtype} ({CPU_DTYPE_ENV} says so)"
    return f"{dtype} (bf16 multiplies {cpu_bf16_speedup():.2f}x as fast as fp32 here)"


def precision_policy() -> Precision:
    """Half precision where it is fast: bf16 or fp16 on CUDA; on CPU, bf16 if this CPU multiplies
    faster in it than in fp32, else fp32 throughout (which is also the more precise).

    Never fp16 on CPU: an fp16 matmul there runs ~350x slower than bf16.
    """
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Precision(device="cuda", teacher_dtype=torch.bfloat16, bf16=True, fp16=False)
        return Precision(device="cuda", teacher_dtype=torch.float16, bf16=False, fp16=True)
    if cpu_uses_bf16():
        return Precision(device="cpu", teacher_dtype=torch.bfloat16, bf16=True, fp16=False)
    return Precision(device="cpu", teacher_dtype=torch.float32, bf16=False, fp16=False)


# ---- loading weights --------------------------------------------------------------------------

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

def student_layer_indices(total: int, keep: int) -> list[int]:
    """`keep` evenly spaced layer indices out of `total`, first and last included."""
    if keep == 1:
        return [0]
    # Half-up rounding: Python's round() rounds half to even and could pick one index twice.
    return [math.floor(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]


def block_drop_candidates(total: int, keep: int) -> list[list[int]]:
    """Every way to keep `keep` of `total` layers by dropping one contiguous block, first and last kept."""
    drop = total - keep
    if drop == 0 or keep < 2:
        return [student_layer_indices(total, keep)]
    return [[i for i in range(total) if not start <= i < start + drop] for start in range(1, keep)]


def choose_student_layers(model, keep: int, batch: dict) -> tuple[list[int], float]:
    """Which layers a derived student keeps: of the students that drop one contiguous block of
    layers, the one with the lowest loss on `batch` (training rows; input_ids, attention_mask, labels).

    Why not every other layer (DistilBERT's recipe): in a decoder, each layer's output is the next
    one's input, and removing every other layer breaks that chain everywhere; removing one block
    breaks it once (Gromov et al. 2024, Minitron 2024). Measured on SmolLM2-135M-Instruct, 15 of
    30 layers, GSM8K (benchmarks/quality_study.py): perplexity before training 473,660 (every
    other) vs 319 (best block); after 20 distillation steps, 64.8 vs 13.0.
    """
    _, layers = _layer_stack(model)
    best, best_loss = None, math.inf
    for kept in block_drop_candidates(len(layers), keep):
        candidate = derive_student(model, keep, kept)
        candidate.eval()
        with torch.inference_mode():
            loss = float(candidate(**batch).loss)
        del candidate
        if loss < best_loss:
            best, best_loss = kept, loss
    return best, best_loss


def _layer_stack(model) -> tuple[str, nn.ModuleList]:
    """The decoder's layers, and their path from `model` (the prefix of their state_dict keys).

    Families keep them under different names (`model.layers`, `transformer.h`, `gpt_neox.layers`,
    ...), so no list of paths is kept: the stack is the decoder's shallowest ModuleList with one entry
    per configured layer.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "base_model", model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    total = getattr(config, "num_hidden_layers", None)
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    stacks = [(name, module) for name, module in decoder.named_modules()
              if isinstance(module, nn.ModuleList) and len(module) == total and name] if total else []
    if prefix is not None and stacks:
        name, layers = min(stacks, key=lambda item: item[0].count("."))
        return f"{prefix}.{name}" if prefix else name, layers
    arch = type(model).__name__
    raise UserError(f"can't derive a student from {arch}: its decoder has no list of its {total} layers",
                    hint="pick a separate student model")


def student_config(config, kept: list[int]):
    """A copy of a teacher's config for a student keeping the layers `kept`."""
    total = config.num_hidden_layers
    config = copy.deepcopy(config)
    config.num_hidden_layers = len(kept)  # GPT-2's attribute_map routes this to n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in kept]
    return config


def derive_student(model, keep_layers: int, kept: list[int] | None = None):
    """A new fp32 model keeping `keep_layers` decoder layers of `model`: those in `kept`, or
    evenly spaced ones (see `choose_student_layers` for a better choice).

    Built fresh from a shrunken config, so per-layer indices (the KV cache's `layer_idx`) and
    `config.layer_types` are right by construction; weights are copied from the kept layers.
    """
    path, layers = _layer_stack(model)
    total = len(layers)
    if not 1 <= keep_layers <= total:
        raise UserError(f"student_layers must be between 1 and {total}, got {keep_layers}")
    kept = list(kept) if kept is not None else student_layer_indices(total, keep_layers)
    if len(kept) != keep_layers or sorted(set(kept)) != kept or not all(0 <= i < total for i in kept):
        raise ValueError(f"kept layers {kept} are not {keep_layers} distinct increasing indices below {total}")

    config = student_config(model.config, kept)
    config.dtype = torch.float32
    student = type(model)(config).to(torch.float32)

    prefix = path + "."
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) not in renumber:
                continue
            key = f"{prefix}{renumber[int(index)]}.{rest}"
        state[key] = value
    student.load_state_dict(state, strict=True)  # copies and casts to the student's fp32
    student.generation_config = copy.deepcopy(model.generation_config)
    return student


def count_parameters(model, trainable_only: bool = False) -> int:
    """Parameters, tied weights counted once (4-bit weights counted unpacked)."""
    if hasattr(model, "num_parameters"):
        return model.num_parameters(only_trainable=trainable_only)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

