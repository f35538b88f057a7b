"""Per-block dedup features (exact keys, shingle sets, MinHash signatures, LSH band keys),
computed in the calling process or in worker processes.

Features of a text depend on that text only (never on its block or its neighbours), so
computing blocks in other processes and taking the results back in submission order gives
exactly the bytes one process gives: that is what makes ``still dedup --workers N`` output
identical for every N. Decisions (index lookups, Jaccard checks, the greedy first-representative
rule) stay in the parent: they are sequential by nature and cheap next to signing.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import xxhash

from still.core import minhash as mh

T = TypeVar("T")


@dataclass(frozen=True)
class FeatureParams:
    """What signing needs (a small picklable value, sent to each worker once)."""

    normalise: tuple[str, ...]
    ngram: int
    near: bool
    num_perm: int
    seed: int
    bands: int
    rows: int


@dataclass
class BlockFeatures:
    """Features of one block; shingle sets travel as one concatenated array and offsets."""

    exact: np.ndarray  # uint64 per text
    shingle_data: np.ndarray  # uint64, all sets concatenated
    shingle_offsets: np.ndarray  # int64, len(texts) + 1
    sigs: np.ndarray  # uint32 [n, num_perm] (n x 0 without near)
    band_keys: np.ndarray  # uint32 [n, bands] (n x 0 without near)

    def shingles(self, row: int) -> np.ndarray:
        return self.shingle_data[self.shingle_offsets[row] : self.shingle_offsets[row + 1]]


class FeatureMaker:
    def __init__(self, params: FeatureParams) -> None:
        self.params = params
        self.normalise = mh.Normaliser(params.normalise)
        self.shingler = mh.BlockShingler(params.ngram)

    def __call__(self, texts: list[str]) -> BlockFeatures:
        """With whitespace collapsed (the default), the exact key is the key of the token
        sequence, computed with the shingles; otherwise it is xxh3 of the normalised text."""
        p = self.params
        n = len(texts)
        norms = [self.normalise(t, collapse=False) for t in texts]
        token_keys = self.normalise.collapses_space
        sets: list[np.ndarray] = [_EMPTY_U64] * n
        exact = np.zeros(n, dtype=np.uint64)
        if token_keys or p.near:
            sets, keys = self.shingler.shingles_and_keys(norms, keys=token_keys)
            if token_keys:
                exact = keys.astype(np.uint64, copy=False)
        if not token_keys:
            exact_hash = xxhash.xxh3_64_intdigest
            exact = np.fromiter((exact_hash(t.encode("utf-8", "surrogatepass")) for t in norms), np.uint64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        if n:
            np.cumsum(np.fromiter((s.size for s in sets), dtype=np.int64, count=n), out=offsets[1:])
        data = np.concatenate(sets) if n else _EMPTY_U64
        if not p.near:
            empty = np.empty((n, 0), dtype=np.uint32)
            return BlockFeatures(exact, data.astype(np.uint64, copy=False), offsets, empty, empty)
        sigs = mh.signatures(sets, p.num_perm, p.seed)
        return BlockFeatures(
            exact, data.astype(np.uint64, copy=False), offsets, sigs, mh.band_keys(sigs, p.bands, p.rows)
        )


_EMPTY_U64 = np.empty(0, dtype=np.uint64)
_worker_maker: FeatureMaker | None = None


def _init_worker(params: FeatureParams) -> None:
    global _worker_maker
    _worker_maker = FeatureMaker(params)


def _worker_features(texts: list[str]) -> BlockFeatures:
    assert _worker_maker is not None
    return _worker_maker(texts)


def resolve_workers(workers: int) -> int:
    """``0`` means every core this process may run on."""
    if workers > 0:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class FeatureSource:
    """Features of blocks in submission order, from this process (1 worker) or a pool.

    ``blocks`` yields (payload, texts); ``features`` yields (payload, BlockFeatures) in the same
    order. With a pool at most ``2 * workers`` blocks are in flight, which bounds memory.
    """

    def __init__(self, params: FeatureParams, workers: int) -> None:
        self.workers = resolve_workers(workers)
        self.maker = FeatureMaker(params)
        self.pool: Any = None
        if self.workers > 1:
            # forkserver: workers do not inherit the parent's open files, locks or threads
            ctx = multiprocessing.get_context("forkserver")
            self.pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(params,))

    def features(self, blocks: Iterable[tuple[T, list[str]]]) -> Iterator[tuple[T, BlockFeatures]]:
        if self.pool is None:
            for payload, texts in blocks:
                yield payload, self.maker(texts)
            return
        pending: deque[tuple[T, Any]] = deque()
        for payload, texts in blocks:
            pending.append((payload, self.pool.apply_async(_worker_features, (texts,))))
            if len(pending) >= 2 * self.workers:
                head, result = pending.popleft()
                yield head, result.get()
        while pending:
            head, result = pending.popleft()
            yield head, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
