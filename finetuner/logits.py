"""The logits a causal LM really produces, at the positions that count: the one home for them.

The fast paths never build [batch, length, vocab] logits: a model's decoder runs once, and its LM
head runs only on counted positions, chunk by chunk (`finetuner.losses`). That is only right if
"LM head" means everything the model's own forward does after the decoder. Some families change
their logits after the head, in their `*ForCausalLM.forward`:
- Gemma-2, Gemma-3 (and nanochat): `final_logit_softcapping`, cap * tanh(logits / cap);
- Granite (and its MoE variants): divide by `logits_scaling`;
- Cohere / Cohere-2: multiply by `logit_scale`.
transformers exposes these as config values (and Cohere's as the model's `logit_scale`), not as a
module, so `head_of` reads them there. `check` then compares against the model's own `.logits`:
a family with some other post-processing is refused by name before it is trained wrongly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

# Families whose head `head_of` reproduces, each checked against its own forward in
# tests/test_families.py; a model type outside this set is checked by running it (`check`).
VERIFIED_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi3", "granite",
    "cohere", "olmo2", "gpt_neox", "gpt2"})
MAX_CHECK_WIDTH = 4096  # a one-layer copy of a wider model costs seconds of memory traffic; checked at load
CHECK_TOKENS = 8  # positions compared by `check`: enough to see any per-token post-processing
LOGIT_SIZE = 100.0  # the largest logit of `plan_problem`'s random copy: beyond any soft cap in use (Gemma's 30)
TOLERANCE = 1e-3  # relative, fp32: the fast path and the model's forward differ only in rounding


@dataclass(frozen=True)
class LogitHead:
    """hidden rows [N, H] -> the model's real logits [N, V]: its LM head, then its family's post-processing."""
    head: object  # the output embedding module (an nn.Linear, possibly adapted by peft)
    softcap: float | None = None
    scale: float = 1.0

    def __call__(self, rows):
        import torch

        logits = self.head(rows)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def vocab_rows(self) -> int:
        return self.head.weight.shape[0]


def unwrapped(model):
    """The transformers model inside DDP / FSDP (`.module`) and peft wrappers (LoRA layers stay in it)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_of(model) -> LogitHead:
    """The real head of `model` (wrapped or not)."""
    inner = unwrapped(model)
    config = inner.config  # what the family's forward reads (a multimodal Gemma-3's ignores its text part's cap)
    scale = 1.0
    if getattr(config, "logits_scaling", None):  # Granite divides
        scale /= float(config.logits_scaling)
    if getattr(inner, "logit_scale", None) is not None:  # Cohere multiplies, by the model's attribute
        scale *= float(inner.logit_scale)
    return LogitHead(inner.get_output_embeddings(), getattr(config, "final_logit_softcapping", None), scale)


def text_config(config):
    """The language model's config: `config` itself, or a multimodal model's text part."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def decoder_outputs(model, input_ids, attention_mask, output_hidden_states: bool = False):
    """The decoder's outputs (`last_hidden_state`, what the LM head sees; `hidden_states` when asked)
    of `model`, computed by its own forward.

    `model` may be wrapped (DDP, FSDP, DeepSpeed, peft). Going through the wrapper's forward is what
    lets DDP prepare its gradient all-reduce and FSDP gather parameters; calling the inner decoder
    directly skips both, and the ranks' weights drift apart (tests/test_distributed.py). A forward
    hook on the decoder takes its output, the LM head's input in every transformers causal LM,
    whatever a config says about `hidden_states[-1]`; `logits_to_keep` with no positions keeps the
    head from computing [batch, length, vocab] logits. A model without `logits_to_keep` computes
    full logits, unused.
    """
    import torch

    inner = unwrapped(model)
    captured = []
    handle = inner.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output))
    extra = {"output_hidden_states": True} if output_hidden_states else {}
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:
        extra["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=input_ids.device)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    finally:
        handle.remove()
    return captured[-1]


def mismatch(model) -> float:
    """Largest relative difference between `head_of(model)` on the decoder's output and the model's
    own `.logits`, on a few tokens (eval mode, no gradients)."""
    import torch

    inner = unwrapped(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            device = inner.get_output_embeddings().weight.device
            vocab = int(getattr(text_config(inner.config), "vocab_size", 0) or head_of(inner).vocab_rows)
            ids = torch.arange(1, CHECK_TOKENS + 1, device=device)[None] % vocab
            mask = torch.ones_like(ids)
            own = inner(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            fast = head_of(inner)(decoder_outputs(inner, ids, mask).last_hidden_state).float()
    finally:
        inner.train(was_training)
    return float((own - fast).abs().max() / own.abs().max().clamp_min(1e-6))


def check(model, role: str = "model") -> None:
    """Refuse a model whose logits finetuner's fast path would not reproduce."""
    from finetuner import ui

    gap = mismatch(model)
    if gap > TOLERANCE:
        kind = getattr(unwrapped(model).config, "model_type", "?")
        raise ui.UserError(f"the {role}'s family ({kind}) changes its logits after the LM head in a way finetuner "
                           f"does not reproduce ({gap:.1%} apart on a test input)",
                           hint="use distillation_mode responses (plain fine-tuning on the teacher's text), or "
                                "a model of a family README's compatibility table lists")


def plan_problem(config) -> str | None:
    """At the plan, from a config alone: why a model of an unverified family cannot be distilled from
    its logits yet, or None. A model of a verified family is reproduced by `head_of`; another one is
    checked on a one-layer random copy of itself (a few seconds), so its family is judged before
    "Start?" without reading its weights."""
    kind = getattr(config, "model_type", None)
    if kind in VERIFIED_TYPES:
        return None
    text = text_config(config)
    width = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0) or 0
    if width > MAX_CHECK_WIDTH:
        return None  # too wide to copy cheaply: `check` compares the loaded model before training
    try:
        model = _tiny_copy(config)
    except Exception as exc:  # any family-specific constructor error: the copy cannot stand for it
        return f"finetuner has not verified the logits of model type {kind} and could not build a copy " \
               f"to check them ({type(exc).__name__})"
    gap = mismatch(model)
    if gap > TOLERANCE:
        return f"model type {kind} changes its logits after the LM head in a way finetuner does not reproduce"
    return None


def _tiny_copy(config):
    """A random one-layer copy of `config` (each part of a multimodal one) with a small vocabulary, its
    head scaled up (`_amplify_head`): the head's post-processing depends on neither depth nor vocabulary."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    tiny = copy.deepcopy(config)
    parts = [tiny] + [getattr(tiny, name) for name in getattr(tiny, "sub_configs", {}) if getattr(tiny, name, None)]
    for part in parts:
        for name in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(part, name, None), int):
                setattr(part, name, 1)
        if getattr(part, "layer_types", None):
            part.layer_types = part.layer_types[:1]
    text = text_config(tiny)
    text.vocab_size = min(getattr(text, "vocab_size", 512) or 512, 512)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(text, name, None), int) and getattr(text, name) >= text.vocab_size:
            setattr(text, name, 0)
    for part in (tiny, text):
        part.tie_word_embeddings = False  # the head alone is scaled
    model = AutoModelForCausalLM.from_config(tiny, dtype=torch.float32)
    _amplify_head(model)
    return model


def _amplify_head(model) -> None:
    """Random weights give logits near 0, where a soft cap (cap * tanh(x / cap)) is the identity and the
    comparison would see nothing: scale the head so the copy's largest logit is LOGIT_SIZE, the size a
    trained model's logits reach."""
    import torch

    head = model.get_output_embeddings()
    ids = torch.arange(1, CHECK_TOKENS + 1)[None] % head.weight.shape[0]
    with torch.no_grad():
        rows = decoder_outputs(model, ids, torch.ones_like(ids)).last_hidden_state
        head.weight.mul_(LOGIT_SIZE / head(rows).abs().max().clamp_min(1e-6))
