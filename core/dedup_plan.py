"""The staged MinHash plan: ``still dedup`` over many machines, with the one-process answer.

Stages (each a function over files in a plan directory, so ``make -j``, ``xargs -P``, Slurm
array jobs or cron can run them; every output is written under a temporary name and renamed,
so a failed stage leaves nothing half-written and a rerun is safe):

1. ``sign`` (per input shard; in ``dedup_plan_inputs``): exact keys, shingle sets and LSH band
   keys of every record; band rows ``(band, key, exact key, id)`` written partitioned into
   ``buckets`` files.
2. ``buckets`` (per bucket): records sharing a band key, reduced to the first record of each
   exact key, give candidate pairs (earlier id, later id).
3. ``edges`` (per bucket): each candidate pair verified by the exact Jaccard similarity of the
   shingle sets; pairs at or above the threshold are the edges.
4. ``clusters`` (one job): the greedy first-representative rule replayed from the edges in
   input order. A record is a copy of the first record with its exact key and shares its fate;
   a first record joins the earlier *representative* it has the best edge to (ties: the
   earliest), else it is a representative. That is exactly what the one-process run decides:
   its candidates are the earlier representatives sharing a band, confirmed by the same Jaccard.
5. ``filter`` (per input shard; in ``dedup_plan_inputs``): the records that are not removed, in
   input order.

Record ids are ``(file number + 1) << 40 | record number`` in the order the inputs were given;
ids below ``1 << 40`` are the representatives of a ``--state`` directory (``dedup_plan_state``
snapshots them into ``sign/state`` as if they were a file read before every input, and commits
this plan's new representatives to it after the last ``filter``), so the state's records count
as earlier than every input, as in ``still dedup --state``.
Known limit: a group of m records sharing a band key gives m*(m-1)/2 candidate pairs (after
exact copies are folded), so huge near-identical groups cost quadratic time in ``buckets``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from still.core.dedup import DedupConfig, jaccard
from still.core.errors import StillError, UsageError
from still.core.fields import Shard as IdShard
from still.core.jsonl import DEFAULT_MAX_LINE_BYTES, ErrorPolicy

ID_SHIFT = 40
STATE_DIR = "state"  # sign/state: the snapshot of a --state directory
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


def check_config(config: DedupConfig) -> None:
    if config.keep != "first" or config.max_per_key != 1 or config.mark or config.clusters_path:
        raise UsageError(
            "the staged plan keeps the first record of each cluster (--keep first, --max-per-key 1, "
            "no --mark/--clusters); use still dedup [--workers N] for the other policies"
        )


@dataclass(frozen=True)
class PlanParams:
    """What every job of one plan must agree on: the index parameters (``config``, with its
    fields and ``state_dir``), the buckets, and how inputs are read (``on_error``, the line limit)."""

    config: DedupConfig
    buckets: int
    on_error: str = "fail"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    @property
    def state_dir(self) -> str | None:
        return os.path.abspath(self.config.state_dir) if self.config.state_dir else None

    def policy(self) -> ErrorPolicy:
        return ErrorPolicy.parse(self.on_error)

    def manifest(self) -> dict[str, Any]:
        fields = self.config.fields
        return {
            **self.config.manifest(),
            "buckets": self.buckets,
            "state": self.state_dir,
            "query_field": fields.query_path,
            "response_field": fields.response_path,
            "max_line_bytes": self.max_line_bytes,
        }


def file_base(k: int) -> np.uint64:
    """The id of input file ``k``'s first record (ids below ``file_base(0)`` are --state's)."""
    return np.uint64((k + 1) << ID_SHIFT)


def atomic_dir(final: str) -> tuple[str, str]:
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp-", dir=parent), final


def commit_dir(tmp: str, final: str) -> None:
    if os.path.exists(final):  # a rerun of a finished stage: replace its output whole
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_npz(path: str, **arrays: Any) -> None:
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_dir(plan: str, k: int) -> str:
    return os.path.join(plan, "sign", f"f{k:05d}")


def state_dir_of(plan: str) -> str:
    return os.path.join(plan, "sign", STATE_DIR)


def bucket_of(band: int, keys: np.ndarray, buckets: int) -> np.ndarray:
    mixed = (keys.astype(np.uint64) + np.uint64(band)) * _BUCKET_MUL
    out: np.ndarray = (mixed >> np.uint64(40)) % np.uint64(buckets)
    return out


def write_buckets(directory: str, rows: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]], buckets: int) -> None:
    """Band rows ``(band, keys, exact keys, ids)`` partitioned into ``bucket-B.npz`` files."""
    where = [bucket_of(band, keys, buckets) for band, keys, _, _ in rows]
    for b in range(buckets):
        parts = []
        for (band, keys, exact, ids), bucket in zip(rows, where):
            sel = np.flatnonzero(bucket == b)
            parts.append((np.full(sel.size, band, np.uint32), keys[sel], exact[sel], ids[sel]))
        save_npz(
            os.path.join(directory, f"bucket-{b}.npz"),
            band=np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.uint32),
            key=np.concatenate([p[1] for p in parts]).astype(np.uint32) if parts else np.empty(0, np.uint32),
            exact=np.concatenate([p[2] for p in parts]).astype(np.uint64) if parts else np.empty(0, np.uint64),
            id=np.concatenate([p[3] for p in parts]).astype(np.uint64) if parts else np.empty(0, np.uint64),
        )


def signed(plan: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every input file's sign metadata; fails unless all were signed with one set of parameters
    (and, with --state, the state was snapshotted with them)."""
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
        raise StillError(
            f"{plan}: shards were signed with different parameters or inputs; sign again (a plan directory "
            "used before with more inputs: use a new one, or remove its sign/fNNNNN beyond the inputs)"
        )
    if params.get("state") and state_meta(plan, params) is None:
        raise StillError(
            f"{plan}: the --state directory {params['state']} is not read yet: sign shard 0 reads it "
            "(still dedup plan sign --shard 0/N --state DIR ...)"
        )
    return metas, params


def state_meta(plan: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The snapshot of the plan's --state directory (None: no --state, or not taken yet)."""
    if not params.get("state"):
        return None
    path = os.path.join(state_dir_of(plan), "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        meta: dict[str, Any] = json.load(f)
    return meta if meta["params"] == params else None


def clusters_token(plan: str) -> str:
    """Names the last ``clusters`` run: filter jobs mark their files with it, commit checks them."""
    path = os.path.join(plan, "clusters", "meta.json")
    if not os.path.exists(path):
        raise StillError(f"{plan}: no clusters yet; run still dedup plan clusters first")
    with open(path) as f:
        token: str = json.load(f)["token"]
    return token


def _buckets_to_do(plan: str, bucket: int | None) -> list[int]:
    _, params = signed(plan)
    total = int(params["buckets"])
    if bucket is not None and not 0 <= bucket < total:
        raise UsageError(f"--bucket {bucket}: the plan has buckets 0..{total - 1}")
    return list(range(total)) if bucket is None else [bucket]


def candidate_pairs(plan: str, bucket: int | None = None) -> None:
    """Stage 2: candidate pairs per bucket, between first records of distinct exact keys (never
    two representatives of the state: they were told apart when they became representatives)."""
    metas, params = signed(plan)
    dirs = [file_dir(plan, int(m["file"])) for m in metas]
    if state_meta(plan, params) is not None:
        dirs.append(state_dir_of(plan))
    for b in _buckets_to_do(plan, bucket):
        parts = [np.load(os.path.join(d, f"bucket-{b}.npz")) for d in dirs]
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
        pairs: list[np.ndarray] = []
        starts = np.flatnonzero(np.concatenate(([True], (band[1:] != band[:-1]) | (key[1:] != key[:-1]), [True])))
        sizes = np.diff(starts)
        inputs_in = np.add.reduceat((ids >= file_base(0)).astype(np.int64), starts[:-1]) if ids.size else sizes
        for g in np.flatnonzero((sizes >= 2) & (inputs_in >= 1)).tolist():
            group = np.sort(ids[starts[g] : starts[g + 1]])
            a, c = np.triu_indices(group.size, 1)
            later = c >= group.size - int(inputs_in[g])  # the state's ids sort first: skip state-state pairs
            pairs.append(np.stack([group[a[later]], group[c[later]]], axis=1))
        found = np.unique(np.concatenate(pairs), axis=0) if pairs else np.empty((0, 2), np.uint64)
        os.makedirs(os.path.join(plan, "buckets"), exist_ok=True)
        save_npz(os.path.join(plan, "buckets", f"b{b}.npz"), pairs=found)


class _Shingles:
    """Shingle sets of signed records and of the state's representatives, read on demand
    (memory-mapped; the state's shingles.bin only grows, so its snapshot's prefix stays valid)."""

    def __init__(self, plan: str, params: dict[str, Any]) -> None:
        self.plan = plan
        self.state = params.get("state")
        self.files: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _load(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k < 0:
            assert self.state
            offsets = np.load(os.path.join(state_dir_of(self.plan), "offsets.npy"))
            data_path = os.path.join(self.state, "shingles.bin")
        else:
            offsets = np.load(os.path.join(file_dir(self.plan, k), "offsets.npy"))
            data_path = os.path.join(file_dir(self.plan, k), "shingles.bin")
        data = np.memmap(data_path, dtype="<u8", mode="r") if offsets[-1] else offsets[:0]
        return offsets, data

    def get(self, doc: int) -> np.ndarray:
        k, ordinal = (doc >> ID_SHIFT) - 1, doc & ((1 << ID_SHIFT) - 1)
        if k not in self.files:
            self.files[k] = self._load(k)
        offsets, data = self.files[k]
        return np.asarray(data[offsets[ordinal] : offsets[ordinal + 1]], dtype=np.uint64)


def verify_edges(plan: str, bucket: int | None = None) -> None:
    """Stage 3: keep the candidate pairs whose exact Jaccard similarity reaches the threshold."""
    _, params = signed(plan)
    threshold = float(params["threshold"])
    shingles = _Shingles(plan, params)
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
        save_npz(
            os.path.join(plan, "edges", f"b{b}.npz"),
            a=np.asarray(keep_a, np.uint64),
            b=np.asarray(keep_b, np.uint64),
            j=np.asarray(sims, np.float64),
        )


def _records(plan: str, metas: list[dict[str, Any]], state: dict[str, Any] | None, name: str) -> list[np.ndarray]:
    """One per-record array of every signed file (the state's first), in id order."""
    dirs = [state_dir_of(plan)] if state is not None else []
    dirs += [file_dir(plan, int(m["file"])) for m in metas]
    return [np.load(os.path.join(d, name)) for d in dirs]


def replay_clusters(plan: str) -> tuple[int, int]:
    """Stage 4: the records to remove (ids, sorted) and why; returns (exact, near) counts.

    With --state, its representatives come first and stay representatives; for ``commit`` it
    also writes the ids of the new representatives and, per removed record, the representative
    it joined and whether it counts as a member of that cluster (as ``still dedup`` counts them)."""
    metas, params = signed(plan)
    total = int(params["buckets"])
    metas.sort(key=lambda m: int(m["file"]))
    state = state_meta(plan, params)
    reps = int(state["reps"]) if state is not None else 0
    id_parts = [np.arange(reps, dtype=np.uint64)] if state is not None else []
    id_parts += [file_base(int(m["file"])) + np.arange(m["records"], dtype=np.uint64) for m in metas]
    ids = np.concatenate(id_parts)
    exact = np.concatenate(_records(plan, metas, state, "exact.npy"))
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
    tmp, final = atomic_dir(os.path.join(plan, "clusters"))
    np.save(os.path.join(tmp, "removed.npy"), ids[removed])
    np.save(os.path.join(tmp, "near.npy"), near)
    if state is not None:
        first = first_of[removed]
        rep_of = np.where(is_rep[first], first, joined[first])  # copies of a near duplicate: its cluster
        np.save(os.path.join(tmp, "rep_of.npy"), ids[rep_of])
        np.save(os.path.join(tmp, "counted.npy"), _counted(plan, metas, state, params, removed, rep_of, reps))
        np.save(os.path.join(tmp, "new_reps.npy"), ids[reps:][is_rep[reps:]])
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"token": uuid.uuid4().hex}, f)  # filter jobs name it: commit knows they saw these clusters
    commit_dir(tmp, final)
    return int((~near).sum()), int(near.sum())


def _counted(
    plan: str,
    metas: list[dict[str, Any]],
    state: dict[str, Any],
    params: dict[str, Any],
    removed: np.ndarray,
    rep_of: np.ndarray,
    reps: int,
) -> np.ndarray:
    """Which removed records count as members of their cluster: all, except (--key query) a
    copy of a representative of this run with the same response (``still dedup`` drops it as a
    repeated record without taking a place)."""
    if params["key"] != "query":
        return np.ones(removed.size, dtype=bool)
    responses = np.concatenate([np.zeros((reps, 2), np.uint64), *_records(plan, metas, None, "responses.npy")])
    mine, theirs = responses[removed], responses[rep_of]
    repeated = (rep_of >= reps) & (mine[:, 0] == 1) & (theirs[:, 0] == 1) & (mine[:, 1] == theirs[:, 1])
    counted: np.ndarray = ~repeated
    return counted
