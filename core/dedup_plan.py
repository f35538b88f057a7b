"""The staged MinHash plan: ``still dedup`` over many machines, with the one-process answer.

Stages (each a function over files in a plan directory, so ``make -j``, ``xargs -P``, Slurm
array jobs or cron can run them; every output is written under a temporary name and renamed,
so a failed stage leaves nothing half-written and a rerun is safe):

1. ``sign`` (per input shard): exact keys, shingle sets and LSH band keys of every record;
   band rows ``(band, key, exact key, id)`` written partitioned into ``buckets`` files.
2. ``buckets`` (per bucket): records sharing a band key, reduced to the first record of each
   exact key, give candidate pairs (earlier id, later id).
3. ``edges`` (per bucket): each candidate pair verified by the exact Jaccard similarity of the
   shingle sets; pairs at or above the threshold are the edges.
4. ``clusters`` (one job): the greedy first-representative rule replayed from the edges in
   input order. A record is a copy of the first record with its exact key and shares its fate;
   a first record joins the earlier *representative* it has the best edge to (ties: the
   earliest), else it is a representative. That is exactly what the one-process run decides:
   its candidates are the earlier representatives sharing a band, confirmed by the same Jaccard.
5. ``filter`` (per input shard): the records that are not removed, in input order.

Record ids are ``file number << 40 | record number`` in the order the inputs were given.
Known limit: a group of m records sharing a band key gives m*(m-1)/2 candidate pairs (after
exact copies are folded), so huge near-identical groups cost quadratic time in ``buckets``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from still.core.dedup import DedupConfig, jaccard, key_text
from still.core.dedup_features import FeatureMaker
from still.core.errors import StillError, UsageError
from still.core.fields import Shard as IdShard
from still.core.jsonl import AtomicOutput, ErrorPolicy, read_records
from still.core.stats import RunStats

ID_SHIFT = 40
_BUCKET_MUL = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        parsed = IdShard.parse(text)  # the I/N syntax and checks of every command's --shard
        return cls(parsed.index, parsed.count)

    def files(self, inputs: Sequence[str]) -> list[tuple[int, str]]:
        """This shard's input files (file k belongs to shard k mod N), with their numbers."""
        return [(k, path) for k, path in enumerate(inputs) if k % self.count == self.index]


def _check_config(config: DedupConfig) -> None:
    if config.keep != "first" or config.max_per_key != 1 or config.mark or config.clusters_path:
        raise UsageError(
            "the staged plan keeps the first record of each cluster (--keep first, --max-per-key 1, "
            "no --mark/--clusters); use still dedup [--workers N] for the other policies"
        )


@dataclass(frozen=True)
class PlanParams:
    config: DedupConfig
    buckets: int

    def manifest(self) -> dict[str, Any]:
        return {**self.config.manifest(), "buckets": self.buckets}


def _atomic_dir(final: str) -> tuple[str, str]:
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp-", dir=parent), final


def _commit_dir(tmp: str, final: str) -> None:
    if os.path.exists(final):  # a rerun of a finished stage: replace its output whole
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _save_npz(path: str, **arrays: Any) -> None:
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _file_dir(plan: str, k: int) -> str:
    return os.path.join(plan, "sign", f"f{k:05d}")


def _bucket_of(band: int, keys: np.ndarray, buckets: int) -> np.ndarray:
    mixed = (keys.astype(np.uint64) + np.uint64(band)) * _BUCKET_MUL
    out: np.ndarray = (mixed >> np.uint64(40)) % np.uint64(buckets)
    return out


def sign(plan: str, inputs: Sequence[str], shard: Shard, params: PlanParams, stats: RunStats) -> None:
    """Stage 1 for this shard's files."""
    config = params.config
    _check_config(config)
    maker = FeatureMaker(config.feature_params())
    bands, _ = config.lsh_params()
    for k, path in shard.files(inputs):
        tmp, final = _atomic_dir(_file_dir(plan, k))
        try:
            exact_parts: list[np.ndarray] = []
            band_parts: list[np.ndarray] = []
            offsets = [np.zeros(1, dtype=np.int64)]
            written = 0
            with open(os.path.join(tmp, "shingles.bin"), "wb") as shingles:
                for texts in _key_blocks(path, config, stats):
                    feats = maker(texts)
                    exact_parts.append(feats.exact)
                    shingles.write(feats.shingle_data.astype("<u8").tobytes())
                    offsets.append(feats.shingle_offsets[1:] + written)
                    written += int(feats.shingle_data.size)
                    if config.near:
                        band_parts.append(feats.band_keys)
            exact = np.concatenate(exact_parts) if exact_parts else np.empty(0, np.uint64)
            ids = (np.uint64(k) << np.uint64(ID_SHIFT)) + np.arange(exact.size, dtype=np.uint64)
            np.save(os.path.join(tmp, "offsets.npy"), np.concatenate(offsets))
            np.save(os.path.join(tmp, "exact.npy"), exact)
            keys = np.concatenate(band_parts) if band_parts else np.empty((0, bands), np.uint32)
            for b in range(params.buckets):
                rows = []
                for band in range(keys.shape[1]):
                    mask = _bucket_of(band, keys[:, band], params.buckets) == b
                    sel = np.flatnonzero(mask)
                    rows.append((np.full(sel.size, band, np.uint32), keys[sel, band], exact[sel], ids[sel]))
                _save_npz(
                    os.path.join(tmp, f"bucket-{b}.npz"),
                    band=np.concatenate([r[0] for r in rows]) if rows else np.empty(0, np.uint32),
                    key=np.concatenate([r[1] for r in rows]) if rows else np.empty(0, np.uint32),
                    exact=np.concatenate([r[2] for r in rows]) if rows else np.empty(0, np.uint64),
                    id=np.concatenate([r[3] for r in rows]) if rows else np.empty(0, np.uint64),
                )
            meta = {"file": k, "files": len(inputs), "source": path, "records": int(exact.size)}
            meta["params"] = params.manifest()
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f)
            _commit_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _key_blocks(path: str, config: DedupConfig, stats: RunStats) -> Iterator[list[str]]:
    texts: list[str] = []
    for rec in read_records([path], stats, ErrorPolicy()):
        texts.append(key_text(config, rec))
        if len(texts) >= config.block_size:
            yield texts
            texts = []
    if texts:
        yield texts


def _signed(plan: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every input file's sign metadata; fails unless all were signed with one set of parameters."""
    metas = []
    for path in sorted(glob.glob(os.path.join(plan, "sign", "f*", "meta.json"))):
        with open(path) as f:
            metas.append(json.load(f))
    if not metas:
        raise StillError(f"{plan}: nothing signed yet; run still dedup plan sign first")
    files = int(metas[0]["files"])
    have = {int(m["file"]) for m in metas}
    missing = sorted(set(range(files)) - have)
    if missing:
        raise StillError(f"{plan}: input files {missing[:10]} are not signed yet; run their sign shards first")
    params = metas[0]["params"]
    if any(m["params"] != params or m["files"] != files for m in metas):
        raise StillError(f"{plan}: shards were signed with different parameters or inputs; sign again")
    return metas, params


def _buckets_to_do(plan: str, bucket: int | None) -> list[int]:
    _, params = _signed(plan)
    total = int(params["buckets"])
    if bucket is not None and not 0 <= bucket < total:
        raise UsageError(f"--bucket {bucket}: the plan has buckets 0..{total - 1}")
    return list(range(total)) if bucket is None else [bucket]


def candidate_pairs(plan: str, bucket: int | None = None) -> None:
    """Stage 2: candidate pairs per bucket, between first records of distinct exact keys."""
    for b in _buckets_to_do(plan, bucket):
        parts = [np.load(p) for p in sorted(glob.glob(os.path.join(plan, "sign", "f*", f"bucket-{b}.npz")))]
        band = np.concatenate([p["band"] for p in parts])
        key = np.concatenate([p["key"] for p in parts])
        exact = np.concatenate([p["exact"] for p in parts])
        ids = np.concatenate([p["id"] for p in parts])
        order = np.lexsort((ids, exact, key, band))
        band, key, exact, ids = band[order], key[order], exact[order], ids[order]
        # the first record of each exact key in each (band, key) group
        firsts = np.ones(ids.size, dtype=bool)
        firsts[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1]) | (exact[1:] != exact[:-1])
        band, key, ids = band[firsts], key[firsts], ids[firsts]
        starts = np.flatnonzero(np.concatenate(([True], (band[1:] != band[:-1]) | (key[1:] != key[:-1]), [True])))
        pairs: list[np.ndarray] = []
        for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist()):
            if hi - lo < 2:
                continue
            group = np.sort(ids[lo:hi])
            a, c = np.triu_indices(group.size, 1)
            pairs.append(np.stack([group[a], group[c]], axis=1))
        found = np.unique(np.concatenate(pairs), axis=0) if pairs else np.empty((0, 2), np.uint64)
        os.makedirs(os.path.join(plan, "buckets"), exist_ok=True)
        _save_npz(os.path.join(plan, "buckets", f"b{b}.npz"), pairs=found)


class _Shingles:
    """Shingle sets of signed records, read on demand (memory-mapped)."""

    def __init__(self, plan: str) -> None:
        self.plan = plan
        self.files: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, doc: int) -> np.ndarray:
        k, ordinal = doc >> ID_SHIFT, doc & ((1 << ID_SHIFT) - 1)
        if k not in self.files:
            d = _file_dir(self.plan, k)
            offsets = np.load(os.path.join(d, "offsets.npy"))
            data = np.memmap(os.path.join(d, "shingles.bin"), dtype="<u8", mode="r") if offsets[-1] else offsets[:0]
            self.files[k] = (offsets, data)
        offsets, data = self.files[k]
        return np.asarray(data[offsets[ordinal] : offsets[ordinal + 1]], dtype=np.uint64)


def verify_edges(plan: str, bucket: int | None = None) -> None:
    """Stage 3: keep the candidate pairs whose exact Jaccard similarity reaches the threshold."""
    _, params = _signed(plan)
    threshold = float(params["threshold"])
    shingles = _Shingles(plan)
    for b in _buckets_to_do(plan, bucket):
        path = os.path.join(plan, "buckets", f"b{b}.npz")
        if not os.path.exists(path):
            raise StillError(f"{plan}: bucket {b} has no candidate pairs yet; run still dedup plan buckets first")
        pairs = np.load(path)["pairs"]
        keep_a, keep_b, sims = [], [], []
        for a, c in pairs.tolist():
            j = jaccard(shingles.get(a), shingles.get(c))
            if j >= threshold:
                keep_a.append(a)
                keep_b.append(c)
                sims.append(j)
        os.makedirs(os.path.join(plan, "edges"), exist_ok=True)
        _save_npz(
            os.path.join(plan, "edges", f"b{b}.npz"),
            a=np.asarray(keep_a, np.uint64),
            b=np.asarray(keep_b, np.uint64),
            j=np.asarray(sims, np.float64),
        )


def replay_clusters(plan: str) -> tuple[int, int]:
    """Stage 4: the records to remove (ids, sorted) and why; returns (exact, near) counts."""
    metas, params = _signed(plan)
    total = int(params["buckets"])
    metas.sort(key=lambda m: int(m["file"]))
    ids = np.concatenate(
        [(np.uint64(m["file"]) << np.uint64(ID_SHIFT)) + np.arange(m["records"], dtype=np.uint64) for m in metas]
    )
    exact = np.concatenate([np.load(os.path.join(_file_dir(plan, int(m["file"])), "exact.npy")) for m in metas])
    n = ids.size
    # the first record (lowest position) of each exact key
    order = np.lexsort((np.arange(n), exact))
    new_key = np.ones(n, dtype=bool)
    new_key[1:] = exact[order][1:] != exact[order][:-1]
    group_first = order[np.flatnonzero(new_key)][np.cumsum(new_key) - 1]
    first_of = np.empty(n, dtype=np.int64)
    first_of[order] = group_first
    edges_a, edges_b, edges_j = [], [], []
    for b in range(total):
        path = os.path.join(plan, "edges", f"b{b}.npz")
        if not os.path.exists(path):
            raise StillError(f"{plan}: bucket {b} has no verified edges yet; run still dedup plan edges first")
        with np.load(path) as data:
            edges_a.append(data["a"])
            edges_b.append(data["b"])
            edges_j.append(data["j"])
    a = np.searchsorted(ids, np.concatenate(edges_a)).astype(np.int64)
    c = np.searchsorted(ids, np.concatenate(edges_b)).astype(np.int64)
    j = np.concatenate(edges_j)
    is_rep = first_of == np.arange(n)
    joined = np.full(n, -1, dtype=np.int64)
    order = np.lexsort((a, c))
    a, c, j = a[order], c[order], j[order]
    pos = 0
    while pos < c.size:
        stop = pos
        target = c[pos]
        while stop < c.size and c[stop] == target:
            stop += 1
        best, best_j = -1, -1.0
        for cand, sim in zip(a[pos:stop].tolist(), j[pos:stop].tolist()):
            # candidates in ascending order; strictly better wins, so ties go to the earliest
            if is_rep[cand] and sim > best_j:
                best, best_j = cand, sim
        if best >= 0:
            is_rep[target] = False
            joined[target] = best
        pos = stop
    removed = np.flatnonzero(~is_rep)
    # a copy of a representative is an exact duplicate; everything else removed is near
    near = ~is_rep[first_of[removed]]
    tmp, final = _atomic_dir(os.path.join(plan, "clusters"))
    np.save(os.path.join(tmp, "removed.npy"), ids[removed])
    np.save(os.path.join(tmp, "near.npy"), near)
    _commit_dir(tmp, final)
    return int((~near).sum()), int(near.sum())


def filter_shard(plan: str, inputs: Sequence[str], shard: Shard, out_dir: str, stats: RunStats) -> list[str]:
    """Stage 5: each of this shard's files without its removed records, as OUT_DIR/NNNNN-NAME."""
    path = os.path.join(plan, "clusters", "removed.npy")
    if not os.path.exists(path):
        raise StillError(f"{plan}: no clusters yet; run still dedup plan clusters first")
    removed = np.load(path)
    near = np.load(os.path.join(plan, "clusters", "near.npy"))
    metas = {int(m["file"]): m for m in _signed(plan)[0]}
    written = []
    os.makedirs(out_dir, exist_ok=True)
    for k, source in shard.files(inputs):
        meta = metas.get(k)
        same_name = meta is not None and os.path.basename(meta["source"]) == os.path.basename(source)
        if meta is None or not same_name or meta["files"] != len(inputs):
            raise UsageError(f"{source}: give filter the inputs sign had, in the same order")
        target = os.path.join(out_dir, f"{k:05d}-{os.path.basename(source)}")
        base = np.uint64(k) << np.uint64(ID_SHIFT)
        with AtomicOutput(target) as out:
            ordinal = -1
            for ordinal, rec in enumerate(read_records([source], stats, ErrorPolicy())):
                doc = base + np.uint64(ordinal)
                at = int(np.searchsorted(removed, doc))
                if at < removed.size and removed[at] == doc:
                    stats.drop("near duplicate" if near[at] else "exact duplicate")
                    continue
                out.write(rec.to_bytes())
                stats.written += 1
            if ordinal + 1 != meta["records"]:  # the file changed since sign: its ids mean nothing
                raise StillError(f"{source}: {ordinal + 1} records now, {meta['records']} when signed; sign again")
        written.append(target)
    return written
