"""Near-duplicate search among unit vectors and the greedy keep rule (the search half of ``dedup --semantic``).

1. **Centres**: spherical k-means (on unit vectors, by dot product), trained on a seeded sample of
   at most ``SAMPLE_PER_CENTRE`` vectors per centre (as faiss does), with faiss when it is
   installed, else numpy (Lloyd's algorithm from k seeded sample vectors).
2. **Probing**: each vector's ``probes`` nearest centres; its cluster is the nearest one. A pair is
   compared when either vector probes the other's cluster: cluster c's members (in keep order)
   against themselves (earlier members only) and against every other vector that probes c, one
   float32 matrix product (BLAS) per block. ``probes=1`` is SemDeDup's within-cluster search, which
   misses the pairs that a k-means boundary splits; with ``probes`` equal to the number of clusters
   every pair is compared (brute force, in clustered blocks).
3. **Keep rule** over the pairs above the threshold, greedy in keep order (best first): a vector
   is a duplicate when a vector kept before it is above the threshold; its representative is the
   most similar such one (ties: the earlier). Vectors without such a pair are kept. On the pairs
   that brute force finds this is brute force's result; a pair the probing misses can only keep a
   duplicate (or, through a chain, change which one of a group is kept).

Cost: about n × probes × (n / clusters) dot products against brute force's n² / 2, plus k-means on
the sample; memory: the blocks (``BLOCK_ELEMENTS`` floats) and 12 bytes per pair above the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SAMPLE_PER_CENTRE = 256  # faiss's max_points_per_centroid: k-means trains on a sample this size per centre
BLOCK_ELEMENTS = 1 << 22  # similarities per matrix product block (16 MiB of float32)


def _np() -> Any:
    import numpy as np

    return np


# ----------------------------------------------------------------------------- centres
def train_centres(x: Any, k: int, iterations: int, seed: int, use_faiss: bool | None = None) -> Any:
    """``k`` unit centres (k × dim float32) of unit vectors ``x`` by spherical k-means.

    ``use_faiss``: None uses faiss when it is installed."""
    np = _np()
    n = x.shape[0]
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    sample = x
    if n > SAMPLE_PER_CENTRE * k:
        sample = x[np.sort(rng.choice(n, SAMPLE_PER_CENTRE * k, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    faiss = _faiss() if use_faiss is None or use_faiss else None
    if use_faiss and faiss is None:
        raise ImportError("faiss is not installed (pip install faiss-cpu)")
    if k == 1:
        mean = sample.sum(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12))[None, :].astype(np.float32)
    if faiss is not None:
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=iterations,
            seed=seed,
            spherical=True,
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=SAMPLE_PER_CENTRE,
        )
        km.train(sample)
        return np.ascontiguousarray(km.centroids, dtype=np.float32)
    return _lloyd(sample, k, iterations, rng)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _lloyd(x: Any, k: int, iterations: int, rng: Any) -> Any:
    np = _np()
    n = x.shape[0]
    centres = x[np.sort(rng.choice(n, k, replace=False))].copy()  # k distinct sample vectors, as faiss starts
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        new = nearest_centres(x, centres, 1)[:, 0]
        if np.array_equal(new, labels):
            break
        labels = new
        by_label = np.argsort(labels, kind="stable")
        used, starts = np.unique(labels[by_label], return_index=True)
        sums = np.zeros_like(centres)
        sums[used] = np.add.reduceat(x[by_label], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centres = np.where(norms > 0, sums / np.where(norms == 0, 1, norms), centres).astype(np.float32)
    return centres


def nearest_centres(x: Any, centres: Any, probes: int) -> Any:
    """The ``probes`` nearest centres of each vector (n × probes, nearest first; ties: lower index)."""
    np = _np()
    k = centres.shape[0]
    probes = max(1, min(probes, k))
    out = np.empty((x.shape[0], probes), dtype=np.int64)
    block = max(1, BLOCK_ELEMENTS // k)
    for s in range(0, x.shape[0], block):
        scores = x[s : s + block] @ centres.T
        if probes < k:
            top = np.argpartition(-scores, probes - 1, axis=1)[:, :probes]
        else:
            top = np.tile(np.arange(k), (len(scores), 1))
        values = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -values), axis=-1)
        out[s : s + block] = np.take_along_axis(top, order, axis=1)
    return out


# ----------------------------------------------------------------------------- pairs
class _Pairs:
    """Pairs (later, earlier, cosine) in keep order, gathered block by block."""

    def __init__(self, rank: Any) -> None:
        self.rank = rank
        self.parts: list[tuple[Any, Any, Any]] = []

    def add(self, a: Any, b: Any, sims: Any) -> None:
        np = _np()
        swap = self.rank[a] < self.rank[b]
        self.parts.append((np.where(swap, b, a), np.where(swap, a, b), sims.astype(np.float32)))

    def arrays(self, unique: bool) -> tuple[Any, Any, Any]:
        np = _np()
        if not self.parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32)
        later, earlier, sims = (np.concatenate(p) for p in zip(*self.parts))
        if unique:  # a pair both of whose vectors probe the other's cluster is found twice
            _, first = np.unique(later * len(self.rank) + earlier, return_index=True)
            later, earlier, sims = later[first], earlier[first], sims[first]
        return later, earlier, sims


def _triangle(vecs: Any, ids: Any, threshold: float, pairs: _Pairs) -> int:
    """Pairs above ``threshold`` among ``vecs`` (in keep order), each row against the rows before it."""
    np = _np()
    n = len(ids)
    block = max(1, BLOCK_ELEMENTS // max(1, n))
    compared = 0
    for s in range(0, n, block):
        e = min(n, s + block)
        sims = vecs[s:e] @ vecs[:e].T
        compared += (e - s) * e
        rows, cols = np.nonzero(sims > threshold)
        below = cols < rows + s  # strictly earlier (this also drops each vector's own 1.0)
        rows, cols = rows[below], cols[below]
        pairs.add(ids[rows + s], ids[cols], sims[rows, cols])
    return compared


def probed_pairs(x: Any, probe_lists: Any, rank: Any, threshold: float) -> tuple[Any, Any, Any, int]:
    """``(later, earlier, cosine, compared)``: the pairs above ``threshold`` that probing finds."""
    np = _np()
    n = x.shape[0]
    labels = probe_lists[:, 0]
    by_rank = np.argsort(rank, kind="stable")
    members_sorted = by_rank[np.argsort(labels[by_rank], kind="stable")]  # by cluster, keep order within
    member_bounds = np.searchsorted(labels[members_sorted], np.arange(probe_lists.max(initial=0) + 2))
    # vectors probing a cluster that is not their own
    p = probe_lists.shape[1]
    foreign_ids = np.repeat(np.arange(n), p - 1)
    foreign_cluster = probe_lists[:, 1:].ravel()
    probing = foreign_cluster >= 0  # -1: no further probe
    foreign_ids, foreign_cluster = foreign_ids[probing], foreign_cluster[probing]
    foreign_order = np.argsort(foreign_cluster, kind="stable")
    foreign_ids, foreign_cluster = foreign_ids[foreign_order], foreign_cluster[foreign_order]
    foreign_bounds = np.searchsorted(foreign_cluster, np.arange(len(member_bounds)))
    pairs = _Pairs(rank)
    compared = 0
    for c in range(len(member_bounds) - 1):
        members = members_sorted[member_bounds[c] : member_bounds[c + 1]]
        if len(members) == 0:
            continue
        vecs = np.ascontiguousarray(x[members])
        compared += _triangle(vecs, members, threshold, pairs)
        others = foreign_ids[foreign_bounds[c] : foreign_bounds[c + 1]]
        block = max(1, BLOCK_ELEMENTS // len(members))
        for s in range(0, len(others), block):
            queries = others[s : s + block]
            sims = x[queries] @ vecs.T
            compared += sims.size
            rows, cols = np.nonzero(sims > threshold)
            pairs.add(queries[rows], members[cols], sims[rows, cols])
    return (*pairs.arrays(unique=p > 1), compared)


def brute_force_pairs(x: Any, rank: Any, threshold: float) -> tuple[Any, Any, Any, int]:
    """``(later, earlier, cosine, compared)``: every pair above ``threshold`` (blocked n² / 2 products)."""
    np = _np()
    by_rank = np.argsort(rank, kind="stable")
    pairs = _Pairs(rank)
    compared = _triangle(np.ascontiguousarray(x[by_rank]), by_rank, threshold, pairs)
    return (*pairs.arrays(unique=False), compared)


# ----------------------------------------------------------------------------- keep rule
def greedy_duplicates(later: Any, earlier: Any, sims: Any, rank: Any) -> dict[int, tuple[int, float]]:
    """``{dropped: (kept representative, cosine)}`` from the pairs above the threshold, in keep order."""
    np = _np()
    order = np.lexsort((rank[earlier], -sims, rank[later]))
    dropped: dict[int, tuple[int, float]] = {}
    decided = -1
    for a, b, s in zip(later[order].tolist(), earlier[order].tolist(), sims[order].tolist()):
        if a == decided or b in dropped:
            continue  # a already has its representative, or b is not kept
        dropped[a] = (b, s)
        decided = a
    return dropped


def keep_rank(order: Sequence[int]) -> Any:
    """Each vector's position in ``order`` (best first)."""
    np = _np()
    rank = np.empty(len(order), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return rank


def semantic_duplicates(
    x: Any,
    order: Sequence[int],
    threshold: float,
    *,
    clusters: int,
    probes: int,
    iterations: int,
    seed: int,
    use_faiss: bool | None = None,
) -> tuple[dict[int, tuple[int, float]], dict[str, Any]]:
    """``({dropped: (representative, cosine)}, info)`` for unit vectors ``x`` kept in ``order`` (best first)."""
    np = _np()
    n = x.shape[0]
    rank = keep_rank(order)
    k = max(1, min(clusters, n))
    centres = train_centres(x, k, iterations, seed, use_faiss)
    probe_lists = nearest_centres(x, centres, probes)
    later, earlier, sims, compared = probed_pairs(x, probe_lists, rank, threshold)
    info = {
        "clusters": int(len(np.unique(probe_lists[:, 0]))),
        "probes": int(probe_lists.shape[1]),
        "kmeans": "faiss" if k > 1 and use_faiss is not False and _faiss() is not None else "numpy",
        "compared_share": round(compared / max(1, n * (n - 1) / 2), 4),
    }
    return greedy_duplicates(later, earlier, sims, rank), info
