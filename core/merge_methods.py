"""Per-tensor merge arithmetic, operation for operation as mergekit 0.1.5 computes it.

Every function takes tensors already cast to the compute dtype (the base first where the method has
one) and returns the merged tensor; the caller casts it to the output dtype. Keeping mergekit's
exact sequence of torch operations (accumulation dtypes, argsort for TIES, the order of random
draws for DARE and Arcee Fusion) is what makes the results bit-identical to it, so do not
"simplify" an expression here without rerunning tests/test_merge.py's mergekit comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_QUANTILE_SAMPLE = 1_000_000  # Arcee Fusion samples this many importance scores for its quantiles
_SLERP_CHUNK = 1024 * 1024  # mergekit's slerp reduces in chunks of this many elements
COMBINE_CHUNK = 32000  # task-vector methods combine this many elements of all task vectors at a time
# Element-wise passes run this many elements at a time: the scratch stays in cache, and below
# torch's intra-op grain size (32768) each operation runs on the calling thread, without waking
# (and, on a loaded machine, waiting for) the OpenMP pool thousands of times.
ELEMENTWISE_CHUNK = 32000


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
    ties_selection: str = "sort"  # how TIES finds its k largest: "sort" (mergekit's order) or "select"


def linear(models: Sequence[torch.Tensor], p: MethodParams, compute: torch.dtype) -> torch.Tensor:
    """Σ wᵢθᵢ (/ Σ wᵢ), accumulated in float32 (float64 for float64 inputs) with addcmul.

    mergekit casts each input to ``compute``, then runs whole-tensor passes over a float32
    accumulator; the same operations over ``ELEMENTWISE_CHUNK`` elements at a time give the same
    bits (every step is per element) with a cache-sized accumulator, no full-size casts, and no
    intra-op thread start-up per pass.
    """
    import torch

    first = models[0]
    acc = torch.float64 if compute == torch.float64 else torch.float32
    weight = torch.tensor([list(p.weights)], dtype=acc)
    coefficients = [c.reshape(1) for c in weight.unbind(1)]
    denominator = weight.sum(dim=1).reshape(1)
    flat = [m.reshape(-1) for m in models]
    result = torch.empty(first.shape, dtype=compute)
    out = result.reshape(-1)
    chunk = min(ELEMENTWISE_CHUNK, max(1, first.numel()))
    total = torch.empty(chunk, dtype=acc)
    for start in range(0, first.numel(), chunk):
        stop = min(start + chunk, first.numel())
        a = total[: stop - start]
        a.zero_()
        for tensor, coefficient in zip(flat, coefficients):
            a.addcmul_(tensor[start:stop].to(compute), coefficient)
        if p.normalize:
            a.div_(denominator)
        out[start:stop].copy_(a)
    return result


def _trim_mask(
    base: torch.Tensor,
    model: torch.Tensor,
    density: float,
    compute: torch.dtype,
    drop: Callable[[torch.Tensor], None],
    selection: str = "sort",
) -> torch.Tensor | float:
    """Where TIES keeps τ = θ − b (in ``compute``): its int(density·n) largest |τ|.

    A bool mask, or 1.0 / 0.0 when density keeps everything / nothing. mergekit masks ``τ`` with the
    first k indices of ``argsort(|τ|.float(), descending=True)``, an unstable sort (libstdc++'s
    introsort): which of several equal magnitudes at the threshold are kept depends on the sort's
    moves, so no threshold rule reproduces it (bf16 task vectors have thousands of equal magnitudes
    at any threshold). ``selection``:

    - ``sort``: the same permutation as mergekit's, from keys that compare the same — the bit
      patterns of |τ| (int16 for 16-bit dtypes, every NaN one value as the float comparator treats
      them) sorted in place, ``drop`` giving back the inputs' pages meanwhile. The sort's memory
      remains: keys, int64 indices and torch's transient int64 index fill (18 bytes per element for
      16-bit dtypes, 16 for wider).
    - ``select``: the threshold by a radix select on those bit patterns (histograms of 15/16-bit
      digits, τ recomputed chunk by chunk), keeping every |τ| above it and, of those equal to it,
      the lowest indices: one bool per element. The same kept set as mergekit wherever no two
      equal magnitudes straddle the k-th place.
    """
    import torch

    numel = base.numel()
    if density >= 1 or density <= 0 or numel == 0:
        return 1.0 if density >= 1 else 0.0
    k = max(1, int(density * numel))
    flat_base, flat_model = base.reshape(-1), model.reshape(-1)
    narrow = compute.itemsize == 2
    key_dtype = torch.int16 if narrow else torch.int32
    wide = compute if narrow else torch.float32  # mergekit compares |τ|.float(): exact for 16-bit dtypes
    inf, nan = (_bits(wide, "inf"), _bits(wide, "nan"))

    def keys(start: int, stop: int) -> torch.Tensor:
        magnitude = (flat_model[start:stop].to(compute) - flat_base[start:stop].to(compute)).abs_().to(wide)
        bits = magnitude.view(key_dtype)
        return bits.masked_fill_(bits > inf, nan)

    chunks = [(start, min(start + ELEMENTWISE_CHUNK, numel)) for start in range(0, numel, ELEMENTWISE_CHUNK)]
    if selection == "select":
        return _radix_select(keys, chunks, k, numel, 0 if narrow else 16)
    sorted_keys = torch.empty(numel, dtype=key_dtype)
    for start, stop in chunks:
        sorted_keys[start:stop] = keys(start, stop)
    drop(model)
    drop(base)
    order = torch.empty(numel, dtype=torch.long)
    torch.sort(sorted_keys, descending=True, out=(sorted_keys, order))
    del sorted_keys
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def _radix_select(
    keys: Callable[[int, int], torch.Tensor], chunks: list[tuple[int, int]], k: int, numel: int, shift: int
) -> torch.Tensor:
    """The k largest non-negative integer keys (equal ones at the k-th: lowest index first), as a mask.

    The k-th largest key is found digit by digit from histograms (the high digit is ``key >> shift``,
    then for ``shift`` 16 the low 16 bits among keys with that high digit); ``keys`` is called again
    for every pass rather than stored.
    """
    import torch

    need, threshold = k, 0
    for level, (bits, bins) in enumerate(((shift, 1 << 15), (0, 1 << 16))[: 2 if shift else 1]):
        hist = torch.zeros(bins, dtype=torch.long)
        for start, stop in chunks:
            key = keys(start, stop).long()
            if level:
                key = key[(key >> 16) == (threshold >> 16)] & 0xFFFF
            hist += torch.bincount(key >> bits, minlength=bins)
        at_least = hist.flip(0).cumsum(0).flip(0)  # at_least[d]: keys whose digit is >= d
        digit = int((at_least >= need).nonzero().max())
        need -= int(at_least[digit] - hist[digit])
        threshold |= digit << bits
    mask = torch.empty(numel, dtype=torch.bool)
    taken = 0
    for start, stop in chunks:
        key = keys(start, stop)
        equal = key == threshold
        rank = equal.cumsum(0) + taken  # 1-based rank of each equal key in index order
        mask[start:stop] = (key > threshold) | (equal & (rank <= need))
        taken += int(equal.sum())
    return mask


def _bits(dtype: torch.dtype, value: str) -> int:
    """The bit pattern (as int16 or int32) of +inf or of the positive NaN a float dtype's abs gives."""
    import torch

    as_int = torch.int16 if dtype.itemsize == 2 else torch.int32
    return int(torch.tensor(float(value), dtype=dtype).abs().view(as_int))


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
) -> torch.Tensor:
    """mergekit's generalized task arithmetic: sparsify τᵢ = θᵢ − b, weight, elect signs, combine.

    Takes ownership of ``models`` (each input is dropped once its task vector exists).
    """
    deltas: list[Callable[[int, int], torch.Tensor]] = []
    while models:
        delta = models.pop(0) - base
        flat = (sparsify(delta, p.densities[len(deltas)]) if sparsify is not None else delta).reshape(-1)
        deltas.append(_slicer(flat))
        del delta, flat
    return combine(base, deltas, p, consensus)


def _slicer(flat: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    return lambda start, stop: flat[start:stop]


def ties(
    base: torch.Tensor,
    models: list[torch.Tensor],
    p: MethodParams,
    compute: torch.dtype,
    drop: Callable[[torch.Tensor], None],
    workers: int = 1,
) -> torch.Tensor:
    """TIES on inputs in their stored dtype: trim each τᵢ (``_trim_mask``), elect signs, combine.

    Only the masks are kept; the combine computes each τᵢ again, chunk by chunk, from the inputs.
    ``workers`` > 1 finds several masks at once (the sorts dominate TIES' time and draw nothing
    random); the caller allows it only where their scratch is small next to the largest tensor's,
    and then no input's pages are dropped (another thread may be reading them).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    flat_base = base.reshape(-1)

    def trim(i: int) -> torch.Tensor | float:
        with torch.inference_mode():  # thread-local: a worker thread does not inherit the caller's
            keep = drop if workers == 1 else _keep
            return _trim_mask(base, models[i], p.densities[i], compute, keep, p.ties_selection)

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            masks = list(pool.map(trim, range(len(models))))
    else:
        masks = [trim(i) for i in range(len(models))]

    def trimmed(model: torch.Tensor, mask: torch.Tensor | float) -> Callable[[int, int], torch.Tensor]:
        flat = model.reshape(-1)

        def part(start: int, stop: int) -> torch.Tensor:
            delta = flat[start:stop].to(compute) - flat_base[start:stop].to(compute)
            if isinstance(mask, float):
                return delta if mask else torch.zeros_like(delta)
            return delta * mask[start:stop].to(compute)  # mergekit's τ · mask, mask in τ's dtype

        return part

    deltas = [trimmed(m, mask) for m, mask in zip(models, masks)]
    models.clear()
    return combine(base, deltas, p, consensus=True, compute=compute)


def _keep(tensor: torch.Tensor) -> None:
    """A ``drop`` that keeps the pages."""


def combine(
    base: torch.Tensor,
    deltas: list[Callable[[int, int], torch.Tensor]],
    p: MethodParams,
    consensus: bool,
    compute: torch.dtype | None = None,
) -> torch.Tensor:
    """Weight the task vectors, elect signs (TIES) and add the (normalised) sum to the base.

    ``deltas`` give each flat task vector's elements [start, stop). Every step is per element, so
    it runs in chunks of ``COMBINE_CHUNK`` elements over all task vectors: the same result as
    mergekit's whole-tensor stack, with small scratch, each operation on the calling thread.
    ``base`` is cast to ``compute`` (default: its dtype) chunk by chunk.
    """
    import torch

    dtype = compute or base.dtype
    weights = torch.tensor(list(p.weights), dtype=dtype).unsqueeze_(-1)
    flat_base = base.reshape(-1)
    numel = flat_base.numel()
    out = torch.empty(numel, dtype=dtype)
    chunk = max(1, COMBINE_CHUNK // len(deltas))  # the stacked chunk stays below torch's intra-op grain size
    for start in range(0, max(1, numel), chunk):
        stop = min(start + chunk, numel)
        d = torch.stack([delta(start, stop) for delta in deltas])
        d.mul_(weights)
        if consensus:
            sign = d.sign().to(dtype)
            majority = (d.sum(dim=0) >= 0).to(dtype) * 2 - 1
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
        out[start:stop] = (flat_base[start:stop].to(dtype) + mixed).to(dtype)
    deltas.clear()
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
    method: str,
    base: torch.Tensor | None,
    models: list[torch.Tensor],
    p: MethodParams,
    compute: torch.dtype,
    drop: Callable[[torch.Tensor], None] = _keep,
    workers: int = 1,
) -> torch.Tensor:
    """Merge one tensor of inputs in their stored dtypes, computing in ``compute`` as mergekit does.

    The result may be in a wider dtype (``result_dtype``). Takes ownership of ``models`` and frees
    each input as early as it can; ``drop`` gives back an input's pages while TIES sorts (see
    ``TensorReader.drop_pages``); ``workers`` > 1 lets TIES trim several task vectors at once.
    linear and TIES read their inputs chunk by chunk; the others cast whole inputs first.
    """
    if method == "linear":
        return linear(models, p, compute)
    assert base is not None
    if method == "ties":
        return ties(base, models, p, compute, drop, workers)
    base = base.to(compute)
    models[:] = [m.to(compute) for m in models]
    if method == "task_arithmetic":
        return task_vectors(base, models, p, None, consensus=False)
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


def result_dtype(method: str, compute: torch.dtype) -> torch.dtype:
    """The dtype ``merge_tensor`` returns: the compute dtype, but Arcee Fusion's float32 mask promotes it."""
    import torch

    return torch.promote_types(compute, torch.float32) if method == "arcee_fusion" else compute
