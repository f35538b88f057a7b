"""Per-tensor merge arithmetic, operation for operation as mergekit 0.1.5 computes it.

Every function takes tensors already cast to the compute dtype (the base first where the method has
one) and returns the merged tensor; the caller casts it to the output dtype. Keeping mergekit's
exact sequence of torch operations (accumulation dtypes, argsort for TIES, the order of random
draws for DARE and Arcee Fusion) is what makes the results bit-identical to it, so do not
"simplify" an expression here without rerunning tests/test_merge.py's mergekit comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_QUANTILE_SAMPLE = 1_000_000  # Arcee Fusion samples this many importance scores for its quantiles
_SLERP_CHUNK = 1024 * 1024  # mergekit's slerp reduces in chunks of this many elements
COMBINE_CHUNK = 4 * 1024 * 1024  # task-vector methods combine this many elements at a time


@dataclass(frozen=True)
class MethodInfo:
    needs_base: bool
    min_models: int  # non-base models
    max_models: int | None
    default_normalize: bool
    params: tuple[str, ...]  # which of weight, density, lambda, t apply


METHODS: dict[str, MethodInfo] = {
    "linear": MethodInfo(False, 1, None, True, ("weight",)),
    "task_arithmetic": MethodInfo(True, 1, None, False, ("weight", "lambda")),
    "ties": MethodInfo(True, 1, None, True, ("weight", "density", "lambda")),
    "dare_linear": MethodInfo(True, 1, None, False, ("weight", "density", "lambda")),
    "dare_ties": MethodInfo(True, 1, None, False, ("weight", "density", "lambda")),
    "slerp": MethodInfo(True, 1, 1, False, ("t",)),
    "model_stock": MethodInfo(True, 2, None, False, ()),
    "arcee_fusion": MethodInfo(True, 1, 1, False, ()),
}


@dataclass(frozen=True)
class MethodParams:
    weights: tuple[float, ...]  # one per non-base model (every model for linear)
    densities: tuple[float, ...]
    lam: float = 1.0
    t: float = 0.5
    normalize: bool = True


def linear(models: Sequence[torch.Tensor], p: MethodParams) -> torch.Tensor:
    """Σ wᵢθᵢ (/ Σ wᵢ), accumulated in float32 (float64 for float64 inputs) with addcmul."""
    import torch

    first = models[0]
    acc = torch.float64 if first.dtype == torch.float64 else torch.float32
    weight = torch.tensor([list(p.weights)], dtype=acc)
    shape = (1,) * first.ndim
    result = torch.zeros_like(first, dtype=acc)
    for tensor, coefficient in zip(models, weight.unbind(1)):
        result.addcmul_(tensor, coefficient.reshape(shape))
    if p.normalize:
        result.div_(weight.sum(dim=1).reshape(shape))
    return result.to(first.dtype)


def _magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the int(density·n) largest |δ| (mergekit's argsort, so ties break the same way)."""
    import torch

    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    w = delta.abs().reshape(-1).float()
    mask[torch.argsort(w, descending=True)[:k]] = 1
    del w
    return delta * mask.reshape_as(delta)


def _bernoulli(delta: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: keep each entry with probability density, rescaled to keep the L1 norm."""
    import torch

    if density >= 1:
        return delta
    work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full_like(delta, fill_value=density, dtype=work))
    tensor = delta.to(work)
    masked = tensor * mask
    before, after = tensor.abs().sum(), masked.abs().sum()
    if not (before < 1e-7 or after < 1e-7):
        masked = masked * (before / after)
    return masked.to(delta.dtype)


def task_vectors(
    base: torch.Tensor,
    models: list[torch.Tensor],
    p: MethodParams,
    sparsify: Callable[[torch.Tensor, float], torch.Tensor] | None,
    consensus: bool,
    workers: int = 1,
) -> torch.Tensor:
    """mergekit's generalized task arithmetic: sparsify τᵢ = θᵢ − b, weight, elect signs, combine.

    Takes ownership of ``models`` (each input is dropped once its task vector exists), and combines
    in chunks of ``COMBINE_CHUNK`` elements: every step after the sparsification is per element, so
    chunking changes no result but keeps the sign election's scratch small.
    """
    import torch

    n = len(models)
    deltas = base.new_empty((n, base.numel()))

    def task_vector(i: int, tensor: torch.Tensor) -> None:
        with torch.inference_mode():  # thread-local: a worker thread does not inherit the caller's
            delta = tensor - base
            if sparsify is not None:
                delta = sparsify(delta, p.densities[i])
            deltas[i] = delta.reshape(-1)

    if workers > 1 and sparsify is _magnitude:
        # TIES' sorts dominate its time; each model's is independent and draws nothing random
        tensors = list(models)
        models.clear()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(task_vector, range(n), tensors))
        del tensors
    else:
        for i in range(n):
            task_vector(i, models.pop(0))
    weights = torch.tensor(list(p.weights), dtype=deltas.dtype).unsqueeze_(-1)
    deltas.mul_(weights)
    flat_base = base.reshape(-1)
    out = torch.empty_like(flat_base)
    for start in range(0, max(1, base.numel()), COMBINE_CHUNK):
        d = deltas[:, start : start + COMBINE_CHUNK]
        if consensus:
            sign = d.sign().to(base.dtype)
            majority = (d.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
            mask = sign == majority
            del sign, majority
            mixed = (d * mask).sum(dim=0)
            divisor = (weights * mask).sum(dim=0)
            divisor[divisor == 0] = 1
            del mask
        else:
            mixed = d.sum(dim=0)
            divisor = weights.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if p.normalize:
            mixed /= divisor
        if p.lam != 1:
            mixed *= p.lam
        out[start : start + COMBINE_CHUNK] = (flat_base[start : start + COMBINE_CHUNK] + mixed).to(base.dtype)
    return out.reshape(base.shape)


def slerp(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors (t=0 gives the base), in float32."""
    import torch

    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    a = base.reshape(1, -1)
    b = other.reshape(1, -1)
    tt = torch.tensor([t], dtype=torch.float32).reshape(-1, 1).to(dtype)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(base.shape).to(base.dtype)
    chunks = range(0, a.shape[1], _SLERP_CHUNK)

    def part(x: torch.Tensor, start: int) -> torch.Tensor:
        return x[:, start : start + _SLERP_CHUNK].to(dtype)

    norm_a = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(part(a, s), dim=1, keepdim=True) for s in chunks]), dim=0
    )
    norm_b = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(part(b, s), dim=1, keepdim=True) for s in chunks]), dim=0
    )
    norm_a = torch.where(norm_a > 1e-8, norm_a, 1)
    norm_b = torch.where(norm_b > 1e-8, norm_b, 1)
    dots = [((part(a, s) / norm_a) * (part(b, s) / norm_b)).sum(dim=1, keepdim=True) for s in chunks]
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    lin = dot.abs() > 0.9995
    theta = torch.acos(torch.where(lin, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(lin, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(lin, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(a)
    for s in chunks:
        result[:, s : s + _SLERP_CHUNK] = coef_a * part(a, s) + coef_b * part(b, s)
    return result.reshape(base.shape)


def model_stock(base: torch.Tensor, models: Sequence[torch.Tensor]) -> torch.Tensor:
    """t = N·cos / (1 + (N−1)·cos) from the mean pairwise cosine of the task vectors; t·mean + (1−t)·b."""
    import torch

    w0 = base.reshape(-1)
    ws = [w.reshape(-1) for w in models]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, oa in enumerate(offsets):
        for ob in offsets[i + 1 :]:
            norm = torch.norm(oa, dim=-1) * torch.norm(ob, dim=-1)
            cos.append(((oa * ob).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
    del offsets
    cos_theta = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (n * cos_theta) / safe)
    average: torch.Tensor = sum(ws) / n  # type: ignore[assignment]
    return (t * average + (1 - t) * w0).reshape(base.shape)


def arcee_fusion(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Keep a delta where |δ|·KL(softmax rows) ≥ median + 1.5·IQR (quantiles of ≤1M sampled scores)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    diff = (other - base).abs()
    p = F.softmax(other, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    importance = diff * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    del diff, p, q
    flat = importance.reshape(-1)
    if flat.numel() > _QUANTILE_SAMPLE:
        flat = flat[torch.randint(flat.numel(), (_QUANTILE_SAMPLE,))]
    ordered, _ = torch.sort(flat)
    idx = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long()
    q1, median, q3 = ordered[idx]
    threshold = median + 1.5 * (q3 - q1)
    mask = (importance >= threshold).float()
    fused: torch.Tensor = base + (other - base) * mask
    return fused


def merge_tensor(
    method: str, base: torch.Tensor | None, models: list[torch.Tensor], p: MethodParams, workers: int = 1
) -> torch.Tensor:
    """Merge one tensor (inputs in the compute dtype); the result may be in a wider dtype.

    The task-vector methods empty ``models`` as they go, to free each input early; ``workers`` > 1
    lets TIES sort the task vectors of several models at once (each sort's scratch is ~12 bytes per
    element, so the caller allows it only for tensors small next to the largest).
    """
    if method == "linear":
        return linear(models, p)
    assert base is not None
    if method == "task_arithmetic":
        return task_vectors(base, models, p, None, consensus=False)
    if method == "ties":
        return task_vectors(base, models, p, _magnitude, consensus=True, workers=workers)
    if method == "dare_linear":
        return task_vectors(base, models, p, _bernoulli, consensus=False)
    if method == "dare_ties":
        return task_vectors(base, models, p, _bernoulli, consensus=True)
    if method == "slerp":
        return slerp(base, models[0], p.t)
    if method == "model_stock":
        return model_stock(base, models)
    if method == "arcee_fusion":
        return arcee_fusion(base, models[0])
    raise ValueError(f"unknown merge method {method}")
