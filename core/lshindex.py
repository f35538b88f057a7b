"""Compact in-memory indexes for dedup: sorted numpy runs instead of Python dicts.

A ``KeyIndex`` maps (table, key) -> representative number for ``tables`` parallel tables
(one per LSH band, or one for exact hashes). Keys arrive in blocks; each block becomes a sorted
run and runs merge like an LSM tree (a run merges into the one before once it is at least a
quarter of its size, which keeps few runs to search), so inserts cost O(log n) amortised per key and
lookups are vectorised ``searchsorted`` calls. Memory is the arrays themselves: for 21 bands of
uint32 keys and uint32 ids, 168 bytes per representative (datasketch's dict index: ~3.4 KB).

Runs never change once made, which is what lets ``still dedup --workers`` search them in its
workers: with ``publish_dir`` a :meth:`KeyIndex.snapshot` writes every run not yet written to a
file there (a raw file: keys, then ids), a worker maps the runs of the snapshot (every
representative before a block was sent), and the deciding process searches only the
representatives added since: the last few blocks' own runs, kept apart for that (merged runs
mix old and new representatives).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import numpy as np

Run = tuple[np.ndarray, np.ndarray]  # keys[tables, n] sorted per table, ids[tables, n]
PublishedRun = tuple[str, int]  # file, entries per table


def _matches(table: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions of the queries found in a sorted table, and where each one's equal keys
    start and stop in it."""
    lo = np.searchsorted(table, queries, side="left")
    found = np.flatnonzero(table[np.minimum(lo, table.size - 1)] == queries)
    return found, lo[found], np.searchsorted(table, queries[found], side="right")


def lookup_runs(runs: Iterable[Run], keys: np.ndarray, key_dtype: np.dtype[Any]) -> dict[int, set[int]]:
    """For each query row ``keys[n, tables]`` with a hit, the ids sharing a key in any table.

    Queries are searched in sorted order: the binary searches then walk the table in one
    direction, which measured ~40% faster than random order on 100k-entry tables."""
    runs = [run for run in runs if run[0].shape[1]]
    hits: dict[int, set[int]] = {}
    if not runs or keys.shape[0] == 0:
        return hits
    for t in range(keys.shape[1]):
        column = keys[:, t].astype(key_dtype, copy=False)
        order = np.argsort(column, kind="stable")
        queries = column[order]
        for run_keys, run_ids in runs:
            found, starts, stops = _matches(run_keys[t], queries)
            row_ids = run_ids[t]
            rows = order[found].tolist()
            if bool((stops - starts == 1).all()):
                for row, rep in zip(rows, row_ids[starts].tolist()):
                    hits.setdefault(row, set()).add(rep)
                continue
            for row, start, stop in zip(rows, starts.tolist(), stops.tolist()):
                hits.setdefault(row, set()).update(row_ids[start:stop].tolist())
    return hits


def load_run(published: PublishedRun, tables: int, key_dtype: np.dtype[Any]) -> Run:
    """A run a :class:`KeyIndex` published (mapped, not read)."""
    path, n = published
    if n == 0:
        return np.empty((tables, 0), key_dtype), np.empty((tables, 0), np.uint32)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    split = tables * n * key_dtype.itemsize
    return data[:split].view(key_dtype).reshape(tables, n), data[split:].view(np.uint32).reshape(tables, n)


def _flat(keys: np.ndarray, table_axis: int) -> np.ndarray:
    """Keys of several tables as one uint64 key each, raveled: the table number above 32-bit keys
    (so a run sorted per table, raveled table by table, is sorted as a whole); 64-bit keys (a
    single table) as they are."""
    if keys.dtype == np.uint64:
        return keys.ravel()
    tables = np.arange(keys.shape[table_axis], dtype=np.uint64) << np.uint64(32)
    return (keys.astype(np.uint64) | (tables[:, None] if table_axis == 0 else tables[None, :])).ravel()


_FILTER_BITS = 22  # 4M slots: ~7% filled by 7 blocks of 2048 x 21 keys
_STAMPS = 65535  # blocks told apart by the filter (far more than are ever searched)
_FILTER_MUL = np.uint64(0x9E3779B97F4A7C15)


def _filter_slots(flat_keys: np.ndarray) -> np.ndarray:
    """Each flat key's slot in the recent blocks' filter (a multiplicative hash: the keys are
    hashes already, but the table number sits in their high bits)."""
    return ((flat_keys * _FILTER_MUL) >> np.uint64(64 - _FILTER_BITS)).astype(np.intp)


class KeyIndex:
    def __init__(
        self,
        tables: int,
        key_dtype: type[np.unsignedinteger],
        publish_dir: str | None = None,
        name: str = "index",
        recent_blocks: int = 0,
    ) -> None:
        """``recent_blocks``: keep that many last added blocks' runs apart, for ``lookup(since=)``."""
        self.tables = tables
        self.name = name
        self.key_dtype = np.dtype(key_dtype)
        self.runs: list[Run] = []
        self.run_top: list[int] = []  # highest id in each run (ids only grow)
        self.publish_dir = publish_dir
        self.run_files: list[str | None] = []  # with publish_dir: each run's file, once published
        self._serial = 0
        self._refs: Counter[str] = Counter()  # snapshots not yet released, per file
        # the last blocks' runs, flattened (_flat) into one sorted array each: lowest, highest id,
        # keys, ids, and the block's stamp in the filter
        self.recent: deque[tuple[int, int, np.ndarray, np.ndarray, int]] = deque(maxlen=recent_blocks or None)
        # a one-hash Bloom filter over the recent blocks' keys that forgets old blocks by itself:
        # each slot holds the stamp of the last block with a key there (0: none yet), so a slot
        # whose stamp is older than the blocks searched lets nothing through
        self._stamps = np.zeros(1 << _FILTER_BITS if recent_blocks else 0, dtype=np.uint16)
        self._stamp = 0

    def __len__(self) -> int:
        return sum(r[0].shape[1] for r in self.runs)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + i.nbytes for k, i in self.runs)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Add rows ``keys[n, tables]`` for representatives ``ids[n]``."""
        if keys.shape[0] == 0:
            return
        k = np.ascontiguousarray(keys.T.astype(self.key_dtype, copy=False))
        i = np.broadcast_to(ids.astype(np.uint32), k.shape).copy()
        order = np.argsort(k, axis=1, kind="stable")
        run = (np.take_along_axis(k, order, axis=1), np.take_along_axis(i, order, axis=1))
        if self.recent.maxlen:
            flat = _flat(run[0], 0)
            self._stamp = self._stamp % _STAMPS + 1
            self._stamps[_filter_slots(flat)] = self._stamp
            self.recent.append((int(ids.min()), int(ids.max()), flat, run[1].ravel(), self._stamp))
        self._push(run, int(ids.max()))
        while len(self.runs) > 1 and self.runs[-2][0].shape[1] <= 4 * self.runs[-1][0].shape[1]:
            b, top_b = self._pop()
            a, top_a = self._pop()
            k = np.concatenate([a[0], b[0]], axis=1)
            i = np.concatenate([a[1], b[1]], axis=1)
            order = np.argsort(k, axis=1, kind="stable")
            self._push((np.take_along_axis(k, order, axis=1), np.take_along_axis(i, order, axis=1)), max(top_a, top_b))

    def _push(self, run: Run, top: int) -> None:
        self.runs.append(run)
        self.run_top.append(top)
        self.run_files.append(None)

    def _pop(self) -> tuple[Run, int]:
        path = self.run_files.pop()
        if path is not None and not self._refs[path]:
            os.unlink(path)
        return self.runs.pop(), self.run_top.pop()

    def lookup(self, keys: np.ndarray, since: int = 0) -> dict[int, set[int]]:
        """For each query row ``keys[n, tables]`` with a hit, the ids sharing a key in any table;
        with ``since``, at least those numbered ``since`` or more (a worker searched the rest):
        from the recent blocks' runs when they hold every such id, else from every run that has one."""
        if since and self.recent and self.recent[0][0] <= since:
            return self._lookup_recent(keys, since)
        runs = [run for run, top in zip(self.runs, self.run_top) if top >= since]
        return lookup_runs(runs, keys, self.key_dtype)

    def _lookup_recent(self, keys: np.ndarray, since: int) -> dict[int, set[int]]:
        """Only the queries the filter lets through for the recent blocks holding ids from
        ``since`` on (their hits, and a few percent of the others) are searched, in sorted order,
        in one search per such block over all tables at once. Searching every query cost this
        process more than the rest of its deciding."""
        hits: dict[int, set[int]] = {}
        searched = [block for block in self.recent if block[1] >= since]  # the newest ones
        if not searched:
            return hits
        queries = _flat(keys.astype(self.key_dtype, copy=False), 1)
        stamps = self._stamps[_filter_slots(queries)].astype(np.int32)
        # a stamp's age in blocks (stamps count 1.._STAMPS round, 0 is no block)
        age = (self._stamp - stamps) % _STAMPS
        passed = np.flatnonzero((stamps != 0) & (age <= (self._stamp - searched[0][4]) % _STAMPS))
        if passed.size == 0:
            return hits
        passed = passed[np.argsort(queries[passed], kind="stable")]
        queries = queries[passed]
        for _, _, flat_keys, flat_ids, _ in searched:
            found, starts, stops = _matches(flat_keys, queries)
            for flat_row, start, stop in zip(passed[found].tolist(), starts.tolist(), stops.tolist()):
                hits.setdefault(flat_row // self.tables, set()).update(flat_ids[start:stop].tolist())
        return hits

    def snapshot(self) -> list[PublishedRun]:
        """Every run now as a file (written on first use: runs merged away before any snapshot
        are never written), each kept until :meth:`release`."""
        assert self.publish_dir is not None
        published: list[PublishedRun] = []
        for pos, (keys, ids) in enumerate(self.runs):
            path = self.run_files[pos]
            if path is None:
                self._serial += 1
                path = os.path.join(self.publish_dir, f"{self.name}-{self._serial}.run")
                with open(path, "wb") as f:
                    f.write(np.ascontiguousarray(keys).data)
                    f.write(np.ascontiguousarray(ids).data)
                self.run_files[pos] = path
            self._refs[path] += 1
            published.append((path, keys.shape[1]))
        return published

    def release(self, published: list[PublishedRun]) -> None:
        live = set(self.run_files)
        for path, _ in published:
            self._refs[path] -= 1
            if not self._refs[path]:
                del self._refs[path]
                if path not in live:
                    os.unlink(path)

    def state(self) -> dict[str, np.ndarray]:
        """One merged run, for persistence."""
        if not self.runs:
            return {"keys": np.empty((self.tables, 0), self.key_dtype), "ids": np.empty((self.tables, 0), np.uint32)}
        k = np.concatenate([r[0] for r in self.runs], axis=1)
        i = np.concatenate([r[1] for r in self.runs], axis=1)
        order = np.argsort(k, axis=1, kind="stable")
        return {"keys": np.take_along_axis(k, order, axis=1), "ids": np.take_along_axis(i, order, axis=1)}

    def load(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Start from a saved state (one run)."""
        self.runs, self.run_top, self.run_files = [], [], []
        if keys.shape[1]:
            self._push((keys.astype(self.key_dtype), ids.astype(np.uint32)), int(ids.max()))
