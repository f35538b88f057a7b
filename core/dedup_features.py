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
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
import xxhash

from still.core import minhash as mh
from still.core.errors import BadInput
from still.core.fields import Fields
from still.core.records import Record

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
    key: str = "query"  # which text is the key (records in: the workers find it themselves)
    fields: Fields = field(default_factory=Fields)


def key_text(key: str, fields: Fields, rec: Record) -> str:
    """The text that decides whether two records are duplicates (raises BadInput without it)."""
    if key == "query":
        return fields.query(rec)
    if key == "response":
        return fields.response(rec)
    return fields.query(rec) + "\n\u241e\n" + fields.response(rec)


def response_key(key: str, fields: Fields, rec: Record) -> int | None:
    """With --key query, the hash of the record's response (None: no response, or another key)."""
    if key != "query":
        return None
    text = fields.response_or_none(rec)
    if text is None:
        return None
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


@dataclass
class BlockFeatures:
    """Features of one block; shingle sets travel as one concatenated array and offsets (the
    MinHash signatures do not: the decisions need their band keys only)."""

    exact: np.ndarray  # uint64 per text
    shingle_data: np.ndarray  # uint64, all sets concatenated
    shingle_offsets: np.ndarray  # int64, len(texts) + 1
    band_keys: np.ndarray  # uint32 [n, bands] (n x 0 without near)

    def shingles(self, row: int) -> np.ndarray:
        return self.shingle_data[self.shingle_offsets[row] : self.shingle_offsets[row + 1]]


@dataclass
class RecordFeatures:
    """Features of a block of raw records: those with a key text, in order, and the others."""

    features: BlockFeatures  # of the records with a key text
    response_keys: list[int | None]  # of the same records
    problems: list[tuple[int, str]]  # (row in the block, what is wrong) of the records without one


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
            return BlockFeatures(exact, data.astype(np.uint64, copy=False), offsets, empty)
        sigs = mh.signatures(sets, p.num_perm, p.seed)
        # the signatures stay here: only their band keys are looked up (a quarter of the bytes to ship)
        return BlockFeatures(exact, data.astype(np.uint64, copy=False), offsets, mh.band_keys(sigs, p.bands, p.rows))

    def records(self, raws: list[bytes]) -> RecordFeatures:
        """Parse raw JSONL lines and find their key texts here too, so that a parent sending
        lines does no more per record than read them, look up and decide."""
        p = self.params
        texts: list[str] = []
        response_keys: list[int | None] = []
        problems: list[tuple[int, str]] = []
        for row, raw in enumerate(raws):
            rec = Record(orjson.loads(raw), raw, "", 0)
            try:
                texts.append(key_text(p.key, p.fields, rec))
            except BadInput as exc:
                problems.append((row, exc.message))
                continue
            response_keys.append(response_key(p.key, p.fields, rec))
        return RecordFeatures(self(texts), response_keys, problems)


_EMPTY_U64 = np.empty(0, dtype=np.uint64)
_worker_maker: FeatureMaker | None = None


def _init_worker(params: FeatureParams) -> None:
    global _worker_maker
    _worker_maker = FeatureMaker(params)


def _worker_features(texts: list[str]) -> BlockFeatures:
    assert _worker_maker is not None
    return _worker_maker(texts)


def _worker_record_features(raws: list[bytes]) -> RecordFeatures:
    assert _worker_maker is not None
    return _worker_maker.records(raws)


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
        """Features of blocks of key texts."""
        return self._in_order(blocks, self.maker, _worker_features)

    def record_features(self, blocks: Iterable[tuple[T, list[bytes]]]) -> Iterator[tuple[T, RecordFeatures]]:
        """Features of blocks of raw JSONL lines (the workers parse them and find the key texts)."""
        return self._in_order(blocks, self.maker.records, _worker_record_features)

    def _in_order(self, blocks: Iterable[tuple[T, Any]], here: Any, there: Any) -> Iterator[tuple[T, Any]]:
        if self.pool is None:
            for payload, work in blocks:
                yield payload, here(work)
            return
        pending: deque[tuple[T, Any]] = deque()
        for payload, work in blocks:
            pending.append((payload, self.pool.apply_async(there, (work,))))
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
