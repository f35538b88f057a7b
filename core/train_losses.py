"""Losses for distill-train: chunked cross-entropy, logit distillation divergences, sparse targets.

Nothing here materialises full-vocabulary logits for a whole sequence: losses take the final
hidden states of the supervised positions only and run the LM head over ``chunk`` positions at a
time. Cross-entropy computes its gradients chunk by chunk in the forward pass (as Liger's fused
linear cross-entropy does), so the backward pass keeps no logits at all; KD chunks are recomputed in
the backward pass (activation checkpointing), holding one chunk of logits at a time.

Divergences, per position, over the vocabulary, with p the teacher and q the student (after
dividing both logits by the temperature):

- ``fkl``: KL(p‖q) = Σ p (log p − log q). DistiLLM and torchtune call the cross-entropy form
  −Σ p log q "forward KL"; it has the same gradient and differs by the teacher entropy H(p).
- ``rkl``: KL(q‖p).
- ``skew-fkl``: KL(p ‖ λp + (1−λ)q), λ = ``skew_alpha`` (DistiLLM, default 0.1).
- ``skew-rkl``: KL(q ‖ λq + (1−λ)p).
- ``jsd``: [β·KL(p‖m) + (1−β)·KL(q‖m)] / (β(1−β)), m = βp + (1−β)q. TRL's generalized JSD divided
  by β(1−β), so that it is continuous in β and equals fkl at β = 0 and rkl at β = 1 (TRL's own
  JSD tends to 0 near the endpoints and special-cases them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KD_LOSSES = ("fkl", "rkl", "skew-fkl", "skew-rkl", "jsd")
DEFAULT_CHUNK = 1024


def _acc(t: torch.Tensor) -> torch.dtype:
    """Loss arithmetic runs in fp32, or fp64 when the inputs are fp64 (the reference tests)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) per row from log-probabilities; entries with a = 0 contribute 0."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1−w)·b), computed stably in log space."""
    if weight_a <= 0.0:
        return log_b
    if weight_a >= 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log(1.0 - weight_a))


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    *,
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position divergence [N] between teacher and student logits [N, V]."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    if kind == "fkl":
        return _kl(log_p, log_q)
    if kind == "rkl":
        return _kl(log_q, log_p)
    if kind == "skew-fkl":
        return _kl(log_p, _mix(log_p, log_q, skew_alpha))
    if kind == "skew-rkl":
        return _kl(log_q, _mix(log_q, log_p, skew_alpha))
    if kind == "jsd":
        if beta <= 0.0:
            return _kl(log_p, log_q)
        if beta >= 1.0:
            return _kl(log_q, log_p)
        log_m = _mix(log_p, log_q, beta)
        return (beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)) / (beta * (1.0 - beta))
    raise ValueError(f"unknown KD loss {kind!r} (one of {', '.join(KD_LOSSES)})")


def sparse_fkl(
    student_logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(p̂‖q) per position against a sparse teacher estimate p̂ (ids [N, K], weights [N, K];
    id −1 or weight 0 marks an unused slot)."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    valid = (ids >= 0) & (weights > 0)
    w = torch.where(valid, weights.to(log_q.dtype), torch.zeros((), dtype=log_q.dtype, device=log_q.device))
    picked = log_q.gather(-1, ids.clamp(min=0).long())
    log_w = torch.where(valid, w.clamp(min=1e-30).log(), torch.zeros_like(w))
    return (w * (log_w - picked)).sum(-1)


class _FusedLinearCE(torch.autograd.Function):
    """Σ_t w_t · CE(h_t W^T, y_t), with gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        token_weights: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        want_w = weight.requires_grad
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        acc = _acc(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            y = targets[start : start + chunk]
            w = token_weights[start : start + chunk].to(acc)
            logits = (h @ weight.t()).to(acc)
            picked = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            # One buffer of chunk × vocab, worked in place: exp(logits − max) serves both the
            # log-sum-exp and the gradient (a chunk of a 32k vocabulary is ~128 MB of fp32).
            top = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(top).exp_()
            norm = probs.sum(dim=-1, keepdim=True)
            lse = (norm.log() + top).squeeze(-1)
            total += ((lse - picked) * w).sum()
            # d/dlogits of w·CE = w·(softmax − onehot)
            grad_logits = probs.mul_(w.unsqueeze(-1) / norm)
            grad_logits[torch.arange(len(y), device=y.device), y] -= w
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                if grad_logits.dtype == acc:
                    grad_weight.addmm_(grad_logits.t(), h)
                else:
                    grad_weight += (grad_logits.t() @ h).to(acc)
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight.to(weight.dtype) if grad_weight is not None else torch.empty(0),
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        has_h, has_w = ctx.has
        return (
            grad_hidden * grad_out.to(grad_hidden.dtype) if has_h else None,
            grad_weight * grad_out.to(grad_weight.dtype) if has_w else None,
            None,
            None,
            None,
        )


def weighted_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Σ_t w_t · CE over positions (hidden [N, H], LM head weight [V, H], targets [N], w [N]).

    SFT uses w = 1/(supervised tokens in the optimizer step); REDI uses signed, length-normalised
    weights. Peak extra memory: one chunk of fp32 logits.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    out: torch.Tensor = _FusedLinearCE.apply(hidden, weight, targets, token_weights, max(1, chunk))  # type: ignore[no-untyped-call]
    return out


def chunked_kd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_weights: torch.Tensor,
    kd_weights: torch.Tensor,
    teacher_chunk: Callable[[int, int], tuple[str, tuple[torch.Tensor, ...]]],
    *,
    kind: str,
    beta: float,
    skew_alpha: float,
    temperature: float,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t ce_w_t·CE_t + kd_w_t·T²·D_t, one chunk of logits at a time (recomputed in backward).

    ``teacher_chunk(start, stop)`` gives ("dense", (teacher_logits,)) or ("sparse", (ids, weights))
    for those positions. Returns (total loss, the KD part alone, detached) for logging.
    """
    total = hidden.sum() * 0.0 + weight.sum() * 0.0
    acc = _acc(hidden)
    kd_part = torch.zeros((), dtype=acc, device=hidden.device)
    scale = temperature**2  # keeps gradient magnitudes comparable across temperatures (Hinton et al.)

    for start in range(0, hidden.shape[0], max(1, chunk)):
        stop = min(start + chunk, hidden.shape[0])
        mode, teacher = teacher_chunk(start, stop)
        y = targets[start:stop]
        wc = ce_weights[start:stop]
        wk = kd_weights[start:stop]

        def piece(
            h: torch.Tensor,
            w_head: torch.Tensor,
            y: torch.Tensor = y,
            wc: torch.Tensor = wc,
            wk: torch.Tensor = wk,
            mode: str = mode,
            teacher: tuple[torch.Tensor, ...] = teacher,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = (h @ w_head.t()).to(acc)
            ce = F.cross_entropy(logits, y, reduction="none")
            if mode == "dense":
                # padded vocabularies (e.g. 151936 vs 152064 rows): compare the ids both heads have
                shared = min(logits.shape[-1], teacher[0].shape[-1])
                d = divergence(
                    logits[:, :shared],
                    teacher[0][:, :shared].to(acc),
                    kind,
                    beta=beta,
                    skew_alpha=skew_alpha,
                    temperature=temperature,
                )
            else:
                d = sparse_fkl(logits, teacher[0], teacher[1], temperature)
            kd = (d * wk.to(acc)).sum() * scale
            return (ce * wc.to(acc)).sum() + kd, kd

        h = hidden[start:stop]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            loss, kd = checkpoint(piece, h, weight, use_reentrant=False)
        else:
            loss, kd = piece(h, weight)
        total = total + loss
        kd_part = kd_part + kd.detach()
    return total, kd_part


def sparse_targets(
    teacher_logits: torch.Tensor,
    top_k: int,
    samples: int,
    generator: torch.Generator | None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse estimate of the teacher distribution per position: ids [N, K+S], weights [N, K+S].

    The top-k tokens keep their exact probabilities; the remaining mass is estimated by S tokens
    drawn from the teacher's distribution over the rest ("Sparse Logit Sampling", Anshumann et al.
    2025: sampled targets are unbiased, E[p̂] = p, where top-k alone is not). With S = 0 the top-k
    probabilities are renormalised to sum to one (axolotl/torchtune top-k KD). Unused slots have id −1.
    """
    p = F.softmax(teacher_logits.to(_acc(teacher_logits)) / temperature, dim=-1)
    n = p.shape[0]
    parts_ids: list[torch.Tensor] = []
    parts_w: list[torch.Tensor] = []
    rest = p
    head_mass = torch.zeros(n, dtype=p.dtype, device=p.device)
    if top_k > 0:
        w, ids = p.topk(top_k, dim=-1)
        head_mass = w.sum(-1)
        parts_ids.append(ids)
        parts_w.append(w if samples > 0 else w / head_mass.unsqueeze(-1))
        rest = p.scatter(-1, ids, 0.0)
    if samples > 0:
        tail_mass = (1.0 - head_mass).clamp(min=0.0)
        has_tail = rest.sum(-1) > 0
        safe = torch.where(has_tail.unsqueeze(-1), rest, torch.ones_like(rest))
        drawn = torch.multinomial(safe, samples, replacement=True, generator=generator)
        counts = torch.zeros_like(p).scatter_add_(-1, drawn, torch.ones_like(drawn, dtype=p.dtype))
        c, ids = counts.topk(samples, dim=-1)
        w = c / samples * tail_mass.unsqueeze(-1)
        keep = (c > 0) & has_tail.unsqueeze(-1)
        parts_ids.append(torch.where(keep, ids, torch.full_like(ids, -1)))
        parts_w.append(torch.where(keep, w, torch.zeros_like(w)))
    return torch.cat(parts_ids, dim=-1).to(torch.int32), torch.cat(parts_w, dim=-1)
