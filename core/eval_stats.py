"""The statistics of ``still eval``: avg@k, unbiased pass@k, cons@k and honest intervals.

Definitions (the R1 report and "Evaluation is All You Need"; Chen et al. 2021 for pass@k):

- avg@k: the mean over problems of c_i / k, the share of a problem's k samples that are correct
  (the "pass@1 averaged over k samples" that R1 reports).
- pass@k' for k' <= k: the unbiased estimator 1 - C(k - c, k') / C(k, k'), averaged over problems,
  computed in product form so that no binomial coefficient overflows.
- cons@k: majority vote over the k extracted answers (see :func:`majority`).
- ci95: a percentile bootstrap over problems (seeded, 10,000 resamples by default): the spread a
  different draw of problems from the same distribution would give.
- sampling_se: the within-problem sampling error of avg@k, sqrt(sum_i p_i (1 - p_i) / k) / Q: the
  spread a second run of k samples on the same problems would give.
- compare: a paired bootstrap over the problems both runs scored.

The bootstrap draws its indices with numpy's seeded PCG64 generator (numpy is a base dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 10_000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def pass_at_k_points(k: int) -> list[int]:
    """The k' values reported for k samples: 1, 2, 4, ... up to k, and k itself."""
    points = [1]
    while points[-1] * 2 < k:
        points.append(points[-1] * 2)
    if points[-1] != k:
        points.append(k)
    return points


def majority(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The most frequent answer and its count; ``None`` answers (no answer, truncated) do not vote.

    Tie-break (documented): among answers with the same count, the one that appears first in
    sample order (lowest sample index) wins, so the vote never depends on hashing or dict order.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, i)
    if not counts:
        return None, 0
    best = min(counts, key=lambda a: (-counts[a], first[a]))
    return best, counts[best]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default rule) of an already sorted sequence."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_means(values: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
    """Means of ``resamples`` resamples (with replacement) of ``values``; deterministic for a seed.

    numpy's PCG64 generator draws the indices, in chunks so memory stays bounded for large Q.
    """
    import numpy as np

    n = len(values)
    if n == 0:
        return []
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, (1 << 22) // n))
    out: list[float] = []
    while len(out) < resamples:
        rows = min(chunk, resamples - len(out))
        idx = rng.integers(0, n, size=(rows, n))
        out.extend(data[idx].mean(axis=1).tolist())
    return out


def bootstrap_ci(values: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` by bootstrap over its items."""
    means = sorted(bootstrap_means(values, seed, resamples))
    return percentile(means, 0.025), percentile(means, 0.975)


def sampling_se(per_problem: Sequence[float], k: int) -> float:
    """Within-problem sampling standard error of avg@k: sqrt(sum p(1-p)/k) / Q."""
    if not per_problem or k < 1:
        return 0.0
    return math.sqrt(sum(p * (1.0 - p) / k for p in per_problem)) / len(per_problem)


@dataclass(frozen=True)
class PairedDifference:
    """B minus A over the problems both runs scored."""

    n: int
    delta: float
    ci95: tuple[float, float]

    @property
    def distinguishable(self) -> bool:
        """True when the 95% interval of the difference excludes zero."""
        lo, hi = self.ci95
        return lo > 0.0 or hi < 0.0


def paired_difference(
    a: Sequence[float], b: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> PairedDifference:
    """Paired bootstrap of mean(b - a): problems are resampled together in both runs."""
    if len(a) != len(b):
        raise ValueError("paired values must have the same length")
    diffs = [y - x for x, y in zip(a, b)]
    lo, hi = bootstrap_ci(diffs, seed, resamples)
    return PairedDifference(len(diffs), mean(diffs), (lo, hi))
