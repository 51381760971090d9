"""The distillation loss on tensors alone, plus the fast path checked against the reference
on random tensors and on real tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from finetuner.losses import kd_loss, kd_loss_from_hidden, select_targets


def random_batch(batch: int = 2, length: int = 8, vocab: int = 13, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=gen)
    teacher = torch.randn(batch, length, vocab, generator=gen)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[0, :3] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    return student, teacher, labels


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_select_targets_shifts_once_and_skips_masked():
    labels = torch.tensor([[-100, 5, 6, -100], [7, -100, 8, 9]])
    mask, targets = select_targets(labels)
    assert mask.tolist() == [[True, True, False], [False, True, True]]
    assert targets.tolist() == [5, 6, 8, 9]


def test_identical_logits_give_zero_kl_and_alpha_times_ce():
    student, _, labels = random_batch()
    out = kd_loss(student, student.clone(), labels, temperature=2.0, alpha=0.3)
    assert out.kl.item() == pytest.approx(0.0, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.3 * out.ce.item(), abs=1e-6)


def test_two_token_case_computed_by_hand():
    # One sequence of 3 tokens, vocabulary 2: positions 0 and 1 predict labels 0 and 1.
    student = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [-9.0, 9.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    t, alpha = 2.0, 0.25

    ce = (-math.log(softmax([0.0, 1.0])[0]) - math.log(softmax([2.0, 0.0])[1])) / 2
    kl = 0.0
    for s_row, t_row in (([0.0, 1.0], [1.0, 0.0]), ([2.0, 0.0], [0.0, 0.0])):
        p_s, p_t = softmax([x / t for x in s_row]), softmax([x / t for x in t_row])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    kl /= 2

    out = kd_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert out.ce.item() == pytest.approx(ce, rel=1e-6)
    assert out.kl.item() == pytest.approx(kl, rel=1e-6)
    assert out.loss.item() == pytest.approx(alpha * ce + (1 - alpha) * t * t * kl, rel=1e-6)


def test_masked_positions_change_nothing():
    student, teacher, labels = random_batch()
    before = kd_loss(student, teacher, labels).loss
    student2, teacher2 = student.clone(), teacher.clone()
    # Position t counts when label t + 1 does; position 2 of row 0 predicts label 3, which counts.
    student2[0, :2] += 100.0
    teacher2[0, :2] -= 100.0
    student2[:, -1] = 1e4  # the last position predicts nothing
    student2[1, -3:] *= 5.0  # predict padding
    assert kd_loss(student2, teacher2, labels).loss.item() == pytest.approx(before.item(), abs=1e-6)


def test_all_masked_batch_is_zero_and_backward_works():
    student, teacher, labels = random_batch()
    student.requires_grad_()
    out = kd_loss(student, teacher, torch.full_like(labels, -100))
    assert out.loss.item() == 0.0 and out.ce.item() == 0.0 and out.kl.item() == 0.0
    out.loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_gradients_reach_only_the_student():
    student, teacher, labels = random_batch()
    student.requires_grad_()
    teacher.requires_grad_()
    out = kd_loss(student, teacher, labels)
    out.loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert not out.ce.requires_grad and not out.kl.requires_grad


def test_kl_term_is_scaled_by_t_squared():
    s_row, t_row = [0.5, -0.2, 0.1], [0.0, 0.3, -0.4]
    student = torch.tensor([[s_row, [0.0] * 3]])
    teacher = torch.tensor([[t_row, [0.0] * 3]])
    labels = torch.tensor([[-100, 2]])
    for t in (1.0, 2.0):
        p_s, p_t = softmax([x / t for x in s_row]), softmax([x / t for x in t_row])
        kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
        out = kd_loss(student, teacher, labels, temperature=t, alpha=0.0)
        assert out.loss.item() == pytest.approx(t * t * kl, rel=1e-5)


def test_kl_gradient_scale_is_comparable_across_temperatures():
    # Hinton et al.: the soft-target gradient shrinks like 1/T^2, and T^2 restores it.
    student, teacher, labels = random_batch(seed=3)
    norms = []
    for t in (2.0, 4.0, 8.0):
        s = student.clone().requires_grad_()
        kd_loss(s, teacher, labels, temperature=t, alpha=0.0).loss.backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 3.0, norms


def test_padding_length_does_not_matter():
    student, teacher, labels = random_batch(length=12, seed=1)
    labels[:, 6:] = -100
    short = kd_loss(student[:, :6], teacher[:, :6], labels[:, :6]).loss
    long = kd_loss(student, teacher, labels).loss
    assert long.item() == pytest.approx(short.item(), rel=1e-6)


def test_num_items_in_batch_normalises_accumulated_halves():
    student, teacher, labels = random_batch(batch=4, seed=2)
    labels[2, :5] = -100  # halves with different counts
    total = int((labels[:, 1:] != -100).sum())
    halves = [kd_loss(student[i:i + 2], teacher[i:i + 2], labels[i:i + 2], num_items_in_batch=total).loss
              for i in (0, 2)]
    full = kd_loss(student, teacher, labels).loss
    assert sum(halves).item() == pytest.approx(full.item(), rel=1e-6)
    as_tensor = kd_loss(student[:2], teacher[:2], labels[:2], num_items_in_batch=torch.tensor(total)).loss
    assert as_tensor.item() == pytest.approx(halves[0].item(), rel=1e-6)


def test_vocab_size_ignores_padding_columns():
    student, teacher, labels = random_batch(vocab=10)
    padded = torch.cat([teacher, torch.randn(*teacher.shape[:2], 6) * 50], dim=-1)
    sliced = kd_loss(student, padded, labels, vocab_size=10).loss
    assert sliced.item() == pytest.approx(kd_loss(student, teacher, labels).loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="vocab_size"):
        kd_loss(student, padded, labels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_fp32_accurate_result(dtype):
    student, teacher, labels = random_batch(vocab=5000)
    student, teacher = student * 4, teacher * 4
    half = kd_loss(student.to(dtype), teacher.to(dtype), labels)
    exact = kd_loss(student.to(dtype).float(), teacher.to(dtype).float(), labels)
    assert half.loss.dtype == torch.float32 and torch.isfinite(half.loss)
    assert half.loss.item() == pytest.approx(exact.loss.item(), rel=1e-5)


def test_fast_path_matches_reference_on_random_tensors():
    torch.manual_seed(0)
    batch, length, h_s, h_t, vocab = 3, 9, 8, 12, 11
    student_head, teacher_head = torch.nn.Linear(h_s, vocab), torch.nn.Linear(h_t, vocab + 5)
    student_hidden = torch.randn(batch, length, h_s, requires_grad=True)
    teacher_hidden = torch.randn(batch, length, h_t)
    labels = torch.randint(0, vocab, (batch, length))
    labels[0, :4] = -100
    labels[2, 6:] = -100
    params = [student_hidden, student_head.weight, student_head.bias]
    kwargs = dict(temperature=1.5, alpha=0.4, num_items_in_batch=40, vocab_size=vocab)

    ref = kd_loss(student_head(student_hidden), teacher_head(teacher_hidden), labels, **kwargs)
    fast = kd_loss_from_hidden(student_hidden, teacher_hidden, student_head, teacher_head, labels,
                               chunk_size=4, **kwargs)  # 19 rows: several chunks and a remainder
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(ref.loss, params), torch.autograd.grad(fast.loss, params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert teacher_head.weight.grad is None


def test_fast_path_all_masked_and_no_grad():
    head = torch.nn.Linear(4, 7)
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    masked = kd_loss_from_hidden(hidden, hidden.detach(), head, head, torch.full((2, 5), -100))
    assert masked.loss.item() == 0.0
    masked.loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    labels = torch.randint(0, 7, (2, 5))
    with torch.no_grad():
        out = kd_loss_from_hidden(hidden, hidden, head, head, labels)
    assert not out.loss.requires_grad and out.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_fast_path_with_bf16_teacher_is_close():
    torch.manual_seed(1)
    student_head, teacher_head = torch.nn.Linear(16, 300), torch.nn.Linear(16, 300).bfloat16()
    student_hidden, teacher_hidden = torch.randn(2, 10, 16), torch.randn(2, 10, 16).bfloat16()
    labels = torch.randint(0, 300, (2, 10))
    fast = kd_loss_from_hidden(student_hidden, teacher_hidden, student_head, teacher_head, labels, chunk_size=7)
    ref = kd_loss(student_head(student_hidden), teacher_head(teacher_hidden), labels)
    assert fast.loss.dtype == torch.float32
    torch.testing.assert_close(fast.loss, ref.loss, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_fast_path_matches_reference_on_tiny_llamas(tiny_llama, tiny_llama_small, tokenizer, divergence):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    student = AutoModelForCausalLM.from_pretrained(tiny_llama_small)
    batch = tokenizer(["What is 3 plus 4? 3 plus 4 is 7.", "What is 12 plus 9?"], padding=True,
                      return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :3] = -100  # a prompt that does not count
    kwargs = dict(temperature=2.0, alpha=0.5, divergence=divergence, beta=0.5)

    def student_hidden():
        return student.get_decoder()(**batch).last_hidden_state

    with torch.no_grad():
        teacher_hidden = teacher.get_decoder()(**batch).last_hidden_state
        teacher_logits = teacher.get_output_embeddings()(teacher_hidden)
    params = [p for p in student.parameters() if p.requires_grad]

    ref = kd_loss(student.get_output_embeddings()(student_hidden()), teacher_logits, labels, **kwargs)
    ref_grads = torch.autograd.grad(ref.loss, params)
    fast = kd_loss_from_hidden(student_hidden(), teacher_hidden, student.get_output_embeddings(),
                               teacher.get_output_embeddings(), labels, chunk_size=5, **kwargs)
    fast_grads = torch.autograd.grad(fast.loss, params)

    assert ref.kl.item() > 0 and ref.ce.item() > 0
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(ref_grads, fast_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- divergences (issue 13): the reference against TRL, the fast path against the reference -----

DIVERGENCE_CASES = [("forward_kl", 0.5, 0.0), ("reverse_kl", 0.5, 1.0), ("jsd", 0.5, 0.5), ("jsd", 0.1, 0.1),
                    ("jsd", 0.0, 0.0), ("jsd", 1.0, 1.0)]  # (divergence, jsd_beta, TRL's beta)


@pytest.mark.parametrize("divergence,beta,trl_beta", DIVERGENCE_CASES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergence_equals_t_squared_times_trl(divergence, beta, trl_beta, temperature):
    gkd = pytest.importorskip("trl.experimental.gkd")
    student, teacher, labels = random_batch(vocab=17, seed=4)
    ours = kd_loss(student, teacher, labels, temperature=temperature, alpha=0.0, divergence=divergence, beta=beta)
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student[:, :-1], teacher[:, :-1], labels[:, 1:], beta=trl_beta,
                                                 temperature=temperature)
    assert theirs.item() > 0
    assert ours.loss.item() == pytest.approx(temperature ** 2 * theirs.item(), rel=1e-5)
    assert ours.kl.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_divergence_zero_for_identical_and_all_masked(divergence):
    student, teacher, labels = random_batch()
    same = kd_loss(student, student.clone(), labels, alpha=0.0, divergence=divergence)
    assert same.loss.item() == pytest.approx(0.0, abs=1e-6)
    s = student.clone().requires_grad_()
    masked = kd_loss(s, teacher, torch.full_like(labels, -100), divergence=divergence)
    assert masked.loss.item() == 0.0
    masked.loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_unknown_divergence_and_beta_out_of_range_are_refused():
    student, teacher, labels = random_batch()
    with pytest.raises(ValueError, match="divergence"):
        kd_loss(student, teacher, labels, divergence="wasserstein")
    with pytest.raises(ValueError, match="beta"):
        kd_loss(student, teacher, labels, divergence="jsd", beta=1.5)


@pytest.mark.parametrize("divergence,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5),
                                             ("jsd", 0.9), ("jsd", 1.0)])
def test_fast_path_matches_reference_for_each_divergence(divergence, beta):
    # Value and gradient (the hand-written backward) against autograd on the reference, in float64
    # so that a wrong term in the derivation cannot hide under rounding.
    torch.manual_seed(2)
    batch, length, h_s, h_t, vocab = 3, 9, 8, 12, 11
    student_head = torch.nn.Linear(h_s, vocab).double()
    teacher_head = torch.nn.Linear(h_t, vocab + 5).double()
    student_hidden = torch.randn(batch, length, h_s, dtype=torch.float64, requires_grad=True)
    teacher_hidden = torch.randn(batch, length, h_t, dtype=torch.float64) * 2
    labels = torch.randint(0, vocab, (batch, length))
    labels[0, :4] = -100
    labels[2, 6:] = -100
    params = [student_hidden, student_head.weight, student_head.bias]
    kwargs = dict(temperature=1.7, alpha=0.3, num_items_in_batch=40, vocab_size=vocab, divergence=divergence,
                  beta=beta)

    def reference():  # the reference computes in fp32; in float64 here it is the exact one
        s = student_head(student_hidden)[:, :-1]
        t = teacher_head(teacher_hidden)[:, :-1, :vocab]
        mask = labels[:, 1:] != -100
        from finetuner.losses import divergence_sum, jsd_beta

        s, t, targets = s[mask], t[mask], labels[:, 1:][mask]
        kl = divergence_sum(torch.log_softmax(s / 1.7, -1), torch.log_softmax(t / 1.7, -1), jsd_beta(divergence, beta))
        ce = torch.nn.functional.cross_entropy(s, targets, reduction="sum")
        return (0.3 * ce + 0.7 * 1.7 ** 2 * kl) / 40

    ref = reference()
    fast = kd_loss_from_hidden(student_hidden, teacher_hidden, student_head, teacher_head, labels,
                               chunk_size=4, **kwargs)
    fp32_ref = kd_loss(student_head(student_hidden), teacher_head(teacher_hidden), labels, **kwargs)
    assert fast.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert fp32_ref.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(ref, params), torch.autograd.grad(fast.loss, params)):
        torch.testing.assert_close(a, b.to(a.dtype), atol=1e-6, rtol=1e-5)
