"""Family x feature matrix: every model type finetuner lists as verified, as a tiny random model built
from its config, through each feature that depends on the architecture.

Features per family: the fast distillation loss against the reference on the model's own logits,
a derived student that trains, LoRA targets, the hidden-state term, generation + save/reload, and the
top-k teacher cache. Post-processing values are set far from their no-op values (softcap 5, Granite's
logits_scaling 4, Cohere's logit_scale 0.3) so that a path skipping them fails here.
"""

from __future__ import annotations

import copy
import functools
import json
from types import SimpleNamespace

import pytest
import torch

from finetuner import adapters, logits, models, ui
from finetuner.losses import kd_loss, select_targets
from finetuner.models import students
from finetuner.objectives import hidden_states
from finetuner.objectives.topk import teacher_topk, topk_kd_loss_from_hidden
from finetuner.teachers.signal import LiveTeacher

VOCAB = 400  # at least conftest's trained tokenizer's vocabulary
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              initializer_range=0.2)  # logits of a few units: a soft cap of 5 bends them visibly
FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "qwen3": dict(head_dim=8),
    "qwen3_moe": dict(head_dim=8, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2),
    "mistral": dict(sliding_window=4),
    "gemma": dict(head_dim=8),
    "gemma2": dict(head_dim=8, final_logit_softcapping=5.0, sliding_window=4),
    "gemma3_text": dict(head_dim=8, final_logit_softcapping=5.0, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
    "phi3": {},
    "granite": dict(logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3),
    "cohere": dict(logit_scale=0.3),
    "olmo2": {},
    "gpt_neox": {},
    "gpt2": dict(n_embd=32, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}
POST_PROCESSED = {"gemma2", "gemma3_text", "granite", "cohere"}  # logits change after the LM head
FAMILY = pytest.mark.parametrize("family", list(FAMILIES))
T = 2.0


def family_config(family: str, layers: int = 4):
    from transformers import AutoConfig

    settings = {**COMMON, **FAMILIES[family], "num_hidden_layers": layers}
    if family == "gpt2":
        settings = {k: v for k, v in settings.items() if k not in ("hidden_size", "intermediate_size",
                                                                  "num_attention_heads", "num_key_value_heads",
                                                                  "max_position_embeddings")}
    if "layer_types" in settings:
        settings["layer_types"] = settings["layer_types"][:layers]
    return AutoConfig.for_model(family, **settings)


@functools.cache
def _built(family: str, seed: int, layers: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(family_config(family, layers), dtype=torch.float32)


def tiny(family: str, seed: int = 0, layers: int = 4):
    """A fresh copy of a tiny random model of `family` (built once per session)."""
    return copy.deepcopy(_built(family, seed, layers))


def frozen(model):
    model.eval()
    return model.requires_grad_(False)


def batch() -> dict:
    """Two rows, the second right-padded; the first 4 tokens of each are prompt (label -100)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def own_logits(model, inputs):
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits


def fast_kd(student, signal, inputs, alpha=0.5, hidden=False):
    out = logits.decoder_outputs(student, inputs["input_ids"], inputs["attention_mask"], output_hidden_states=hidden)
    result, teacher_states = signal.loss(out, logits.head_of(student), inputs, alpha, None, hidden_states=hidden)
    return result, out, teacher_states


def gradients(model) -> dict:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_every_verified_type_is_in_the_matrix():
    assert logits.VERIFIED_TYPES <= set(FAMILIES)


# ---- 1. the fast distillation loss is the reference on the models' own logits ----------------------

@FAMILY
def test_fast_distillation_loss_is_the_reference(family):
    teacher, student = frozen(tiny(family, seed=0)), tiny(family, seed=1).eval()  # eval: no dropout
    assert logits.mismatch(teacher) < 1e-4 and logits.mismatch(student) < 1e-4
    inputs = batch()
    if family in POST_PROCESSED:  # the post-processing is not a no-op at these settings
        with torch.no_grad():
            bare = logits.head_of(teacher).head(logits.decoder_outputs(teacher, inputs["input_ids"],
                                                                       inputs["attention_mask"]).last_hidden_state)
            assert (bare - own_logits(teacher, inputs)).abs().max() > 0.05 * bare.abs().max()
    for divergence in ("forward_kl", "jsd"):
        fast, _, _ = fast_kd(student, LiveTeacher(teacher, T, None, divergence), inputs)
        fast.loss.backward()
        fast_grads = gradients(student)
        with torch.no_grad():
            teacher_logits = own_logits(teacher, inputs)
        reference = kd_loss(own_logits(student, inputs), teacher_logits, inputs["labels"], T, 0.5,
                            divergence=divergence)
        reference.loss.backward()
        reference_grads = gradients(student)
        torch.testing.assert_close(fast.loss, reference.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.kl, reference.kl, rtol=1e-5, atol=1e-6)
        assert fast_grads.keys() == reference_grads.keys() and fast_grads
        for name in reference_grads:
            torch.testing.assert_close(fast_grads[name], reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)


# ---- 2. a derived student: layers chosen, weights copied, a training step ---------------------------

@FAMILY
def test_derived_student_trains(family):
    teacher = frozen(tiny(family))
    inputs = batch()
    kept, calibration = models.choose_student_layers(teacher, 2, inputs)
    assert len(kept) == 2 and kept[0] == 0 and kept[-1] == 3 and calibration == calibration  # not NaN
    student = models.derive_student(teacher, 2, kept)
    assert student.config.num_hidden_layers == 2 and type(student) is type(teacher)
    _, teacher_layers = students.layer_stack(teacher)
    _, student_layers = students.layer_stack(student)
    for new, old in enumerate(kept):
        for (name, a), (_, b) in zip(student_layers[new].state_dict().items(),
                                     teacher_layers[old].state_dict().items()):
            assert torch.equal(a, b), name
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    signal = LiveTeacher(teacher, T, None)
    losses = []
    for _ in range(3):
        result, _, _ = fast_kd(student, signal, inputs)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(result.loss.detach()))
    assert losses[-1] < losses[0], losses


# ---- 3. LoRA ---------------------------------------------------------------------------------------

@FAMILY
def test_lora_trains_only_adapter_weights(family):
    teacher, model = frozen(tiny(family, seed=0)), tiny(family, seed=1)
    targets = adapters.lora_target_modules(model)
    assert targets == "all-linear" or (isinstance(targets, list) and targets)
    wrapped = adapters.apply_adapter(SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0), model, "lora")
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    assert logits.mismatch(wrapped) < 1e-4
    before = {name: p.detach().clone() for name, p in wrapped.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    result, _, _ = fast_kd(wrapped, LiveTeacher(teacher, T, None), batch())
    result.loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in wrapped.parameters() if p.grad is not None)
    optimizer.step()
    changed = {name for name, p in wrapped.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trainable


# ---- 4. response-only labels -----------------------------------------------------------------------

def test_chat_rows_are_labelled_on_the_response_only(tokenizer, tmp_path):
    # One test for all families: which tokens are labelled is decided by the tokenizer and its chat
    # template alone (finetuner.data renders and tokenizes the prompt and the response apart); the model
    # never takes part. Each family's own template is its tokenizer's, which the tiny models do not have.
    from finetuner.config import RunConfig
    from finetuner.data.preparing import make_collator, prepare

    assert len(tokenizer) <= VOCAB
    path = tmp_path / "chat.jsonl"
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} plus 1?"},
                      {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."}] for i in range(6)]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    data = prepare(RunConfig(dataset=str(path), eval_fraction=0.0), tokenizer)
    answers = {c[-1]["content"] for c in conversations}
    for row in data.train:
        counted = [i for i, label in enumerate(row["labels"]) if label != -100]
        assert counted and counted == list(range(counted[0], len(row["labels"])))  # one block, at the end
        response = tokenizer.decode([row["input_ids"][i] for i in counted], skip_special_tokens=True).strip()
        assert response in answers
        prompt = tokenizer.decode(row["input_ids"][:counted[0]])
        assert "Be brief." in prompt and "plus 1?" in prompt and response not in prompt
    rows = make_collator(tokenizer)([{k: row[k] for k in ("input_ids", "attention_mask", "labels")}
                                     for row in data.train])
    assert int(rows["input_ids"].max()) < VOCAB  # the rows fit every tiny model's vocabulary


# ---- 5. the hidden-state term ------------------------------------------------------------------------

@FAMILY
def test_hidden_state_term_between_teacher_and_derived_student(family):
    teacher = frozen(tiny(family))
    kept = [0, 1, 3]
    student = models.derive_student(teacher, 3, kept).eval()
    term = hidden_states.build("auto", "mse", student, teacher, kept)
    assert term.pairs == [(0, 0), (1, 1), (2, 3)] and term.projections is None
    inputs = batch()
    result, out, teacher_states = fast_kd(student, LiveTeacher(teacher, T, None), inputs, hidden=True)
    assert len(out.hidden_states) == 4 and len(teacher_states) == 5
    # Copied layers fed the same input give the same output: the map pairs what it says.
    torch.testing.assert_close(out.hidden_states[2], teacher_states[2])
    mask = torch.nn.functional.pad(select_targets(inputs["labels"])[0], (0, 1))
    total = term(out.hidden_states[1:], teacher_states[1:], mask)
    assert torch.isfinite(total) and float(total) > 0
    (result.loss + total / mask.sum()).backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in student.parameters() if p.grad is not None)


# ---- 6. generation, save, reload ---------------------------------------------------------------------

@FAMILY
def test_generate_save_and_reload(family, tmp_path):
    from transformers import AutoModelForCausalLM

    student = models.derive_student(frozen(tiny(family)), 2, [0, 3]).eval()
    inputs = batch()
    prompt = inputs["input_ids"][:1, :5]
    with torch.no_grad():
        out = student.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, min_new_tokens=4,
                               do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9) and torch.equal(out[:, :5], prompt)
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(again) is type(student) and again.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(own_logits(again, inputs), own_logits(student, inputs))
        torch.testing.assert_close(again.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                                                  min_new_tokens=4, do_sample=False, pad_token_id=0), out)
    assert logits.mismatch(again) < 1e-4


# ---- 7. teacher cache: top-k entries from the real head, k = vocabulary -------------------------------

@FAMILY
def test_topk_cache_with_full_k_is_the_reference(family):
    teacher, student = frozen(tiny(family, seed=0)), tiny(family, seed=1).eval()
    inputs = batch()
    mask, _ = select_targets(inputs["labels"])
    with torch.no_grad():
        hidden = logits.decoder_outputs(teacher, inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        entries = teacher_topk(logits.head_of(teacher)(hidden[:, :-1][mask]), VOCAB, T)
        teacher_logits = own_logits(teacher, inputs)
    student_hidden = logits.decoder_outputs(student, inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
    fast = topk_kd_loss_from_hidden(student_hidden, logits.head_of(student), inputs["labels"], entries,
                                    temperature=T, alpha=0.5)
    fast.loss.backward()
    fast_grads = gradients(student)
    reference = kd_loss(own_logits(student, inputs), teacher_logits, inputs["labels"], T, 0.5)
    reference.loss.backward()
    reference_grads = gradients(student)
    torch.testing.assert_close(fast.loss, reference.loss, rtol=1e-5, atol=1e-6)
    for name in reference_grads:
        torch.testing.assert_close(fast_grads[name], reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)


# ---- families finetuner has not verified ---------------------------------------------------------------

def _bare_head(model):
    """A head that forgets the family's post-processing: what a new family's unknown rule looks like."""
    return logits.LogitHead(logits.unwrapped(model).get_output_embeddings())


def test_plan_refuses_an_unverified_family_whose_head_is_not_reproduced(monkeypatch):
    monkeypatch.setattr(logits, "VERIFIED_TYPES", logits.VERIFIED_TYPES - {"granite", "gemma2", "llama"})
    # head_of reproduces Granite's division: unverified, it is checked on a copy and accepted.
    assert logits.plan_problem(family_config("granite")) is None
    monkeypatch.setattr(logits, "head_of", _bare_head)
    reason = logits.plan_problem(family_config("granite"))
    assert reason is not None and "granite" in reason
    assert logits.plan_problem(family_config("llama")) is None  # nothing after its head: the bare head is right
    # Gemma-2's own default cap (30): random weights give logits far below it, where tanh is the identity;
    # the check must still see it.
    config = family_config("gemma2")
    config.final_logit_softcapping = 30.0
    config.initializer_range = 0.02
    reason = logits.plan_problem(config)
    assert reason is not None and "gemma2" in reason


def test_plan_checks_a_multimodal_family_on_a_small_copy_of_its_text_part():
    from transformers import Gemma3Config

    # The text part's cap is one Gemma3ForConditionalGeneration's forward never applies (transformers
    # 5.23): the copy is compared with that forward, whatever the config says. The copy shrinks every
    # part (a full-size text part would be 34 layers of width 2560).
    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, final_logit_softcapping=30.0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                  patch_size=8)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    assert config.model_type not in logits.VERIFIED_TYPES
    assert logits.plan_problem(config) is None
    copy_config = logits._tiny_copy(config).config
    assert copy_config.text_config.num_hidden_layers == 1 and copy_config.vision_config.num_hidden_layers == 1


def test_check_refuses_a_model_whose_head_is_not_reproduced(monkeypatch):
    model = tiny("granite")
    logits.check(model, "teacher")  # reproduced: accepted
    monkeypatch.setattr(logits, "head_of", _bare_head)
    with pytest.raises(ui.UserError, match=r"teacher's family \(granite\)"):
        logits.check(model, "teacher")
    logits.check(tiny("llama"), "teacher")
