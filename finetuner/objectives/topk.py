"""Forward KL on a teacher's cached top-k entries: the loss behind `teacher_cache`.

What is stored, per counted position: the teacher's k largest log-probabilities at T = 1
(log_softmax over the shared vocabulary V, then top-k), their token ids, and one tail statistic,
log sum_{j not in top-k} p_j^(1/T) at the run's temperature T (the tempered weight of the rest).

What is compared, at temperature T, over k + 1 buckets (the k ids and one tail bucket):
- teacher: P_i = p_i^(1/T) / Z and P_tail = sum_tail p_j^(1/T) / Z, Z their sum; these are exactly
  softmax(teacher_logits / T) at the k ids and the mass it puts on all the others;
- student: softmax(z / T) at the k ids, and everything else summed into its tail bucket.
loss = alpha * CE + (1 - alpha) * T^2 * KL(P || S) over the buckets, token-averaged as `kd_loss`.

Why the tail statistic and not only the top-k log-probs: tempering needs the tail's shape. Spreading
the remaining mass uniformly over the V - k ids is the other choice; on the built-in teacher (T = 2,
k = 64, GSM8K) it puts 79% of the tempered mass in the tail where the truth is 59% (0.20 L1 error
on the teacher's targets; 916 counted tokens of 8 rows, 2 CPU cores, 2026-11-24; the study in
benchmarks/teacher_cache.py reports the same columns for several k). The statistic costs 4 bytes a
token and ties the cache to T (a run at another temperature is refused).

With k = V the tail is empty and this is `kd_loss`, value and gradient. For k < V the bucket
masses are exact; what is lost is the teacher's shape inside the tail: the gradient on the student's
logits is (1 - alpha) T (S - P~) + CE's, where P~ is P on the k ids and P_tail spread over the other
ids in the student's own proportions, so its L1 distance to the full-logit gradient is at most
2 (1 - alpha) T P_tail per counted token (`gradient_bound`), and the KL is below the full one by
P_tail KL(teacher's tail shape || student's).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetuner.losses import KDLoss, SavedGradientChunk, averaged, shared_vocab, ce_gradient, select_targets


class TopKEntries(NamedTuple):
    """The cached teacher signal for N counted positions, in `select_targets` order."""
    logprobs: Tensor  # [N, k] top-k log-probabilities at T = 1
    ids: Tensor  # [N, k] their token ids
    tail: Tensor  # [N] log sum over the other ids of p^(1/T), at the cache's temperature
    samples: Tensor | None = None  # [N, m] ids drawn from the tempered tail (with replacement), or None
    tail_negentropy: Tensor | None = None  # [N] sum over the tail of P_j log P_j (tempered), with samples


def teacher_topk(teacher_logits: Tensor, k: int, temperature: float, uniforms: Tensor | None = None,
                systematic: bool = True) -> TopKEntries:
    """What the cache stores for rows of teacher logits [N, V] (fp32 results); with `uniforms`
    ([N, m] in [0, 1)), also m ids drawn from the tempered teacher's tail (the ids outside the top k),
    and the tail's share of the tempered teacher's negative entropy (for the KL's value).

    The draws are systematic: one offset u (a row's first uniform) and the m evenly spaced points
    (u + i) / m on the tail's CDF. Each id is still drawn m P_j / P_tail times on average (unbiased),
    but an id with that expectation above 1 is drawn its floor or ceiling, never by luck (README,
    "Teacher cache", measures it against independent draws: `systematic=False`, one per uniform).
    Each row's draws depend on its own uniforms only."""
    logprobs = F.log_softmax(teacher_logits.float(), dim=-1)
    top, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1, sorted=True)
    tail = (logprobs / temperature).scatter(1, ids, -math.inf).logsumexp(-1)
    if uniforms is None:
        return TopKEntries(top, ids, tail)
    tempered = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    weights = tempered.exp().scatter_(1, ids, 0.0)
    negentropy = torch.where(weights > 0, weights * tempered, 0.0).sum(-1)
    weights[weights.sum(-1) <= 0] = 1.0  # no tail (k = V): any ids, weighed by a tail mass of 0
    cumulative = weights.cumsum_(-1)
    m, points = uniforms.shape[-1], uniforms.to(cumulative)
    if systematic:
        points = (points[:, :1] + torch.arange(m, device=cumulative.device)) / m
    drawn = torch.searchsorted(cumulative, points * cumulative[:, -1:], right=True)
    return TopKEntries(top, ids, tail, drawn.clamp_(max=weights.shape[-1] - 1), negentropy)


def teacher_buckets(entries: TopKEntries, temperature: float) -> Tensor:
    """log P over the k + 1 buckets at temperature T ([N, k + 1], fp32)."""
    tempered = torch.cat([entries.logprobs.float() / temperature, entries.tail.float()[:, None]], dim=-1)
    return F.log_softmax(tempered, dim=-1)


def gradient_bound(entries: TopKEntries, temperature: float, alpha: float) -> Tensor:
    """Per counted token, an upper bound on the L1 distance between this loss's gradient on the
    student's logits and the full-logit `kd_loss`'s: 2 (1 - alpha) T P_tail."""
    return 2 * (1 - alpha) * temperature * teacher_buckets(entries, temperature)[:, -1].exp()


def topk_kd_loss(student_logits: Tensor, entries: TopKEntries, labels: Tensor, vocab_size: int | None = None,
                 temperature: float = 2.0, alpha: float = 0.5,
                 num_items_in_batch: Tensor | int | None = None) -> KDLoss:
    """The cached loss on full student logits [B, L, V]; the reference for the fast path."""
    mask, targets = select_targets(labels)
    student = shared_vocab(student_logits[:, :-1][mask], None, vocab_size)
    sums = _ChunkTopKD.apply(student, teacher_buckets(entries, temperature), entries.ids.long(), targets,
                             temperature, alpha, torch.is_grad_enabled() and student.requires_grad,
                             *_tail_samples(entries, slice(None)))
    return averaged(*sums, len(targets), num_items_in_batch)


def topk_kd_loss_from_hidden(student_hidden: Tensor, student_head: nn.Module, labels: Tensor,
                             entries: TopKEntries, vocab_size: int | None = None, temperature: float = 2.0,
                             alpha: float = 0.5, num_items_in_batch: Tensor | int | None = None,
                             chunk_size: int = 1024) -> KDLoss:
    """`topk_kd_loss` from the student's final hidden states [B, L, H]: the LM head runs only on
    counted rows, `chunk_size` at a time, so no [B, L, V] tensor is ever made."""
    mask, targets = select_targets(labels)
    if len(entries.ids) != len(targets):
        raise ValueError(f"{len(entries.ids)} cached teacher rows for {len(targets)} counted positions")
    rows_hidden = student_hidden[:, :-1][mask]
    buckets = teacher_buckets(entries, temperature)
    ids = entries.ids.long()
    loss = ce = kl = 0.0
    for start in range(0, max(len(targets), 1), chunk_size):  # one empty chunk keeps the graph attached
        rows = slice(start, start + chunk_size)
        student_logits = shared_vocab(student_head(rows_hidden[rows]), None, vocab_size)
        chunk = _ChunkTopKD.apply(student_logits, buckets[rows], ids[rows], targets[rows], temperature, alpha,
                                  torch.is_grad_enabled() and student_logits.requires_grad,
                                  *_tail_samples(entries, rows))
        loss, ce, kl = loss + chunk[0], ce + chunk[1], kl + chunk[2]
    return averaged(loss, ce, kl, len(targets), num_items_in_batch)


def _tail_samples(entries: TopKEntries, rows: slice) -> tuple:
    if entries.samples is None:
        return None, None
    return entries.samples[rows].long(), entries.tail_negentropy[rows].float()


class _ChunkTopKD(SavedGradientChunk):
    """Sums of the loss, CE and bucket KL over one chunk of student logits [N, V], with the
    gradient written by hand (as `losses._ChunkKD`, and because autograd through a log-sum-exp over
    an empty tail, k = V, would give NaN)."""

    @staticmethod
    def forward(ctx, student_logits: Tensor, teacher_logp: Tensor, ids: Tensor, targets: Tensor,
                temperature: float, alpha: float, with_grad: bool, samples: Tensor | None = None,
                tail_negentropy: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        logits = student_logits.float()
        logprobs = F.log_softmax(logits, dim=-1)
        ce = -logprobs.gather(1, targets[:, None]).sum()
        logprobs_t = F.log_softmax(logits / temperature, dim=-1)
        student_top = logprobs_t.gather(1, ids)
        teacher_p = teacher_logp.exp()
        top_kl = torch.where(teacher_p[:, :-1] > 0, teacher_p[:, :-1] * (teacher_logp[:, :-1] - student_top), 0.0)
        if samples is None:  # the tail as one bucket
            student_tail = logprobs_t.scatter(1, ids, -math.inf).logsumexp(-1, keepdim=True)
            tail_kl = torch.where(teacher_p[:, -1:] > 0, teacher_p[:, -1:] * (teacher_logp[:, -1:] - student_tail), 0.0)
        else:  # the tail's sum P_j (log P_j - log S_j), estimated from ids drawn from the teacher's tail
            tail_kl = tail_negentropy - teacher_p[:, -1] * logprobs_t.gather(1, samples).mean(-1)
        kl = top_kl.sum() + tail_kl.sum()
        loss = alpha * ce + (1 - alpha) * temperature ** 2 * kl
        if with_grad:
            # d(KL)/d(z / T) = S - P~: P on the k ids; on the others, P_tail spread over the drawn ids
            # (P_tail / m per draw), or without draws in the student's own proportions, s_j P_tail / S_tail.
            probs_t = logprobs_t.exp_()
            if samples is None:
                tail_ratio = torch.where(teacher_p[:, -1:] > 0, (teacher_logp[:, -1:] - student_tail).exp(), 0.0)
                kl_grad = probs_t * (1 - tail_ratio)
            else:
                share = (teacher_p[:, -1:] / samples.shape[1]).expand(samples.shape)
                kl_grad = probs_t.clone().scatter_add_(1, samples, -share)
            kl_grad.scatter_(1, ids, probs_t.gather(1, ids) - teacher_p[:, :-1])
            grad = ce_gradient(logprobs, targets, alpha)
            grad.add_(kl_grad, alpha=(1 - alpha) * temperature)
            _ChunkTopKD.save_gradient(ctx, grad, student_logits.dtype, inputs=9)
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl
