"""The loss on cached top-k teacher entries, on tensors: k = V is kd_loss exactly (value and
gradient), small k stays within the documented gradient bound, the fast path matches."""

from __future__ import annotations

import pytest
import torch

from finetuner.losses import kd_loss, select_targets
from finetuner.objectives.topk import (gradient_bound, teacher_buckets, teacher_topk, topk_kd_loss,
                                       topk_kd_loss_from_hidden)


def batch(vocab: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 9, vocab, generator=gen)
    teacher = torch.randn(3, 9, vocab, generator=gen) * 3  # peaked, like a trained LM
    labels = torch.randint(0, vocab, (3, 9), generator=gen)
    labels[0, :3] = -100
    labels[2, -2:] = -100
    return student, teacher, labels


def entries_for(teacher, labels, k, temperature):
    mask, _ = select_targets(labels)
    return teacher_topk(teacher[:, :-1][mask], k, temperature)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_k_equal_to_vocabulary_is_kd_loss_value_and_gradient(temperature):
    student, teacher, labels = batch()
    entries = entries_for(teacher, labels, 40, temperature)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    full = kd_loss(s1, teacher, labels, temperature=temperature, alpha=0.3, num_items_in_batch=50)
    cached = topk_kd_loss(s2, entries, labels, temperature=temperature, alpha=0.3, num_items_in_batch=50)
    for a, b in zip(full, cached):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    full.loss.backward()
    cached.loss.backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("k,temperature", [(1, 1.0), (4, 2.0), (10, 2.0), (10, 0.5)])
def test_small_k_gradient_within_documented_bound(k, temperature):
    student, teacher, labels = batch(seed=k)
    entries = entries_for(teacher, labels, k, temperature)
    count = len(entries.ids)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    kd_loss(s1, teacher, labels, temperature=temperature, alpha=0.2).loss.mul(count).backward()
    topk_kd_loss(s2, entries, labels, temperature=temperature, alpha=0.2).loss.mul(count).backward()
    mask, _ = select_targets(labels)
    gap = (s1.grad - s2.grad)[:, :-1][mask].abs().sum(-1)
    bound = gradient_bound(entries, temperature, alpha=0.2)
    assert (gap <= bound + 1e-6).all(), (gap, bound)
    assert gap.max() > 0  # k < V really loses something: the test can fail
    # Every bucket mass is exact: the teacher's tail bucket is what the full softmax leaves out.
    full = torch.softmax(teacher[:, :-1][mask] / temperature, dim=-1)
    tail = 1 - full.gather(1, entries.ids).sum(-1)
    torch.testing.assert_close(teacher_buckets(entries, temperature)[:, -1].exp(), tail, atol=1e-5, rtol=1e-4)


def test_cached_kl_is_below_full_kl_and_ce_is_unchanged():
    student, teacher, labels = batch(seed=5)
    entries = entries_for(teacher, labels, 5, 2.0)
    full = kd_loss(student, teacher, labels)
    cached = topk_kd_loss(student, entries, labels)
    assert cached.ce.item() == pytest.approx(full.ce.item(), rel=1e-6)
    assert 0 <= cached.kl.item() < full.kl.item()  # aggregating buckets can only lose divergence


def test_fast_path_matches_reference_in_chunks():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30)
    hidden = torch.randn(3, 9, 8, requires_grad=True)
    _, teacher, labels = batch(vocab=30)
    entries = entries_for(teacher, labels, 6, 2.0)
    params = [hidden, head.weight, head.bias]
    ref = topk_kd_loss(head(hidden), entries, labels, alpha=0.4, num_items_in_batch=30)
    fast = topk_kd_loss_from_hidden(hidden, head, labels, entries, alpha=0.4, num_items_in_batch=30, chunk_size=4)
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(ref.loss, params), torch.autograd.grad(fast.loss, params)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fast_path_all_masked_is_zero_and_wrong_row_count_raises():
    head = torch.nn.Linear(4, 7)
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    empty = teacher_topk(torch.zeros(0, 7), 3, 2.0)
    out = topk_kd_loss_from_hidden(hidden, head, torch.full((2, 5), -100), empty)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    with pytest.raises(ValueError, match="cached teacher rows"):
        topk_kd_loss_from_hidden(hidden, head, torch.randint(0, 7, (2, 5)), empty)


def test_tail_samples_make_the_cached_kl_and_gradient_unbiased():
    """With ids drawn from the tempered tail, the cached KL and gradient tend to the full-logit ones
    (many draws here); the tail as one bucket stays far below at T 2."""
    student, teacher, labels = batch(vocab=60, seed=3)
    teacher = teacher / 3  # a flat teacher: at T 2 most of its mass is outside the top 4
    mask, _ = select_targets(labels)
    rows = teacher[:, :-1][mask]
    uniforms = torch.rand(len(rows), 20000, generator=torch.Generator().manual_seed(0))
    sampled, bucket = teacher_topk(rows, 4, 2.0, uniforms), teacher_topk(rows, 4, 2.0)
    assert not (sampled.samples[:, :, None] == sampled.ids[:, None, :]).any()  # draws are tail ids only
    grads = []
    for entries in (None, sampled, bucket):
        s = student.clone().requires_grad_()
        out = (kd_loss(s, teacher, labels, temperature=2.0, alpha=0.2) if entries is None
               else topk_kd_loss(s, entries, labels, temperature=2.0, alpha=0.2))
        out.loss.backward()
        grads.append((out.kl.item(), s.grad[:, :-1][mask]))
    (full_kl, full_grad), (sampled_kl, sampled_grad), (bucket_kl, bucket_grad) = grads
    assert sampled_kl == pytest.approx(full_kl, rel=0.01)
    assert bucket_kl < 0.9 * full_kl
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(sampled_grad.flatten(), full_grad.flatten(), 0) > 0.999
    assert cosine(bucket_grad.flatten(), full_grad.flatten(), 0) < cosine(sampled_grad.flatten(), full_grad.flatten(), 0)


def test_systematic_tail_draws_take_each_id_its_expected_count_rounded():
    """Systematic draws: an id expected m P_j / P_tail times is drawn that many times rounded down or
    up, never by luck (independent draws miss or repeat ids far more)."""
    _, teacher, labels = batch(vocab=60, seed=5)
    mask, _ = select_targets(labels)
    rows, m = teacher[:, :-1][mask] / 3, 64
    uniforms = torch.rand(len(rows), m, generator=torch.Generator().manual_seed(1))
    entries = teacher_topk(rows, 4, 2.0, uniforms)
    tempered = torch.softmax(rows / 2.0, -1).scatter(1, entries.ids, 0.0)
    expected = m * tempered / tempered.sum(-1, keepdim=True)
    counts = torch.zeros_like(expected).scatter_add_(1, entries.samples, torch.ones(entries.samples.shape))
    assert ((counts >= expected.floor() - 1e-4) & (counts <= expected.ceil() + 1e-4)).all()
    independent = teacher_topk(rows, 4, 2.0, uniforms, systematic=False).samples
    counts = torch.zeros_like(expected).scatter_add_(1, independent, torch.ones(independent.shape))
    assert not ((counts >= expected.floor() - 1e-4) & (counts <= expected.ceil() + 1e-4)).all()


def test_tail_samples_at_k_equal_to_vocabulary_are_kd_loss():
    student, teacher, labels = batch()
    mask, _ = select_targets(labels)
    entries = teacher_topk(teacher[:, :-1][mask], 40, 2.0, torch.rand(int(mask.sum()), 16))
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    full = kd_loss(s1, teacher, labels, temperature=2.0, alpha=0.3)
    cached = topk_kd_loss(s2, entries, labels, temperature=2.0, alpha=0.3)
    for a, b in zip(full, cached):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    full.loss.backward()
    cached.loss.backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-7, rtol=1e-5)
