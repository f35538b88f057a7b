"""Exact and near-duplicate removal over a JSONL record stream.

Pipeline per block of records (in priority order):

1. key text (query, response or both) -> explicit normalisation -> 64-bit exact key (xxh3);
2. word n-gram shingles (64-bit hashes) -> MinHash signatures (datasketch affine32, vectorised)
   -> LSH band keys;
3. decisions in order: an exact-key hit makes a record a duplicate of that representative;
   otherwise every LSH candidate representative is confirmed by the exact Jaccard similarity of
   the shingle sets, and the record joins the best one at or above the threshold; otherwise it
   becomes a new representative.

With ``--key query`` (multi-sample data: k responses per query) a record is also told apart by
its response: a copy of a record already kept (same query, same response) is dropped as an
"exact duplicate" and takes none of the ``--max-per-key`` places; other responses to the same
query fill those places, and the rest are dropped as "same query beyond --max-per-key".

Clusters are stars around a representative: a record joins a cluster only when its own
Jaccard similarity to the representative reaches the threshold, so chains of merely similar
records never merge unrelated texts (the failure of union-find over unverified LSH bands).

The index (exact keys, band keys, shingle sets of representatives) lives in memory as sorted
numpy runs with shingle sets in an on-disk append-only file, and persists in ``--state DIR``
across runs. Many cores: ``dedup_features`` (workers sign, this process decides); many machines:
``dedup_plan`` (the staged plan, the same answer).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import orjson
import xxhash

from still.core import minhash as mh
from still.core.dedup_features import (
    BlockFeatures,
    FeatureParams,
    FeatureSource,
    IndexSnapshot,
    RawBlock,
    RecordFeatures,
    response_key,
)
from still.core.dedup_features import key_text as features_key_text
from still.core.errors import BadInput, StillError, UsageError
from still.core.fields import Fields, get_path, is_missing
from still.core.jsonl import Record
from still.core.lshindex import KeyIndex
from still.core.memtune import keep_freed_memory
from still.core.stats import RunStats

STATE_FORMAT = 1
KEYS = ("query", "response", "query+response")


@dataclass(frozen=True)
class DedupConfig:
    key: str = "query"
    keep: str = "first"
    threshold: float = 0.8
    num_perm: int = 128
    bands: int = 0  # 0: chosen from the threshold (see minhash.choose_bands)
    rows: int = 0
    ngram: int = 5
    seed: int = 1
    normalise: tuple[str, ...] = mh.DEFAULT_NORMALISE
    near: bool = True
    max_per_key: int = 1
    mark: bool = False
    clusters_path: str | None = None
    state_dir: str | None = None
    block_size: int = 2048
    fields: Fields = field(default_factory=Fields)
    wait: bool = False  # --state held by another run: wait for it (else fail at once)
    workers: int = 1  # processes computing features (0: every core); decisions stay in this one

    def __post_init__(self) -> None:
        if self.key not in KEYS:
            raise UsageError(f"--key must be one of {', '.join(KEYS)}")
        if not (self.keep in ("first", "longest") or (self.keep.startswith("max:") and len(self.keep) > 4)):
            raise UsageError("--keep must be first, longest or max:FIELD")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError("--threshold must be in (0, 1]")
        if self.max_per_key < 1:
            raise UsageError("--max-per-key must be at least 1")
        if self.num_perm < 2:
            raise UsageError("--num-perm must be at least 2")
        if self.bands < 0 or self.rows < 0 or (self.bands or self.rows) and self.bands * self.rows > self.num_perm:
            raise UsageError("--bands x --rows must not exceed --num-perm")
        if self.ngram < 1:
            raise UsageError("--ngram must be at least 1")
        if self.workers < 0:
            raise UsageError("--workers must be 0 (every core) or more")

    def lsh_params(self) -> tuple[int, int]:
        if self.bands and self.rows:
            return self.bands, self.rows
        if self.bands or self.rows:
            raise UsageError("give both --bands and --rows, or neither")
        return mh.choose_bands(self.threshold, self.num_perm)

    def feature_params(self) -> FeatureParams:
        bands, rows = self.lsh_params()
        return FeatureParams(
            self.normalise, self.ngram, self.near, self.num_perm, self.seed, bands, rows, self.key, self.fields
        )

    def manifest(self) -> dict[str, Any]:
        """Everything that makes a stored index comparable with this run."""
        bands, rows = self.lsh_params()
        return {
            "format": STATE_FORMAT,
            "scheme": "affine32",
            "seed": self.seed,
            "num_perm": self.num_perm,
            "bands": bands,
            "rows": rows,
            "ngram": self.ngram,
            "shingle_version": mh.SHINGLE_VERSION,
            "normalise": list(self.normalise),
            "normalise_version": mh.NORMALISE_VERSION,
            "key": self.key,
            "threshold": self.threshold,
            "near": self.near,
        }


_EMPTY_SET = np.empty(0, dtype=np.uint64)


@dataclass(slots=True)
class Item:
    """A record on its way through the deduplicator, with its features."""

    rec: Record
    index: int  # position in the input
    text: str = ""  # the key text, normalised and signed with its block
    exact: int = 0
    shingles: np.ndarray = field(default_factory=lambda: _EMPTY_SET)  # one shared empty array, never written
    rep: int = -1  # the representative it joined (or became)
    jaccard: float = 1.0
    match: str | None = None  # "exact" / "near" for duplicates, "record" for a copy of a kept record
    rank: int = 0  # 0 for the representative, then arrival order in its cluster; -1 for a copy
    response_key: int | None = None  # --key query: hash of the response, telling samples apart


class ShingleStore:
    """Sorted shingle-hash sets of representatives, appended to a file and read back on demand.

    Keeping them on disk (page-cached) is what bounds memory: only offsets stay in RAM.
    """

    def __init__(self, path: str, offsets: array | None = None) -> None:  # type: ignore[type-arg]
        self.path = path
        self.offsets: array = offsets if offsets is not None else array("Q", [0])  # type: ignore[type-arg]
        self.file: IO[bytes] = open(path, "ab+")  # noqa: SIM115 - closed by close()
        end = self.offsets[-1] * 8
        if os.fstat(self.file.fileno()).st_size != end:
            # a failed run appended past what the state recorded. Not truncated otherwise: on
            # ext4 a file truncated to 0 is flushed to disk when closed (0.15 s for 300 MB of
            # a temporary store that is deleted right after)
            self.file.truncate(end)
        self.file.seek(0, os.SEEK_END)
        self._dirty = False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def append(self, sets: Sequence[np.ndarray]) -> None:
        if not sets:
            return
        end = self.offsets[-1]
        for s in sets:
            end += int(s.size)
            self.offsets.append(end)
        self.file.write(np.concatenate(sets).astype("<u8", copy=False).data)  # no copy into bytes
        self._dirty = True

    def get(self, rep: int) -> np.ndarray:
        if self._dirty:
            self.file.flush()
            self._dirty = False
        start, stop = self.offsets[rep], self.offsets[rep + 1]
        data = os.pread(self.file.fileno(), (stop - start) * 8, start * 8)
        return np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)

    def close(self) -> None:
        self.file.close()


class MemoryIndex:
    """Sorted numpy runs + an on-disk shingle store; ``state_dir`` makes it persistent."""

    def __init__(self, config: DedupConfig, publish_dir: str | None = None, recent_blocks: int = 0) -> None:
        """``publish_dir``: where snapshots write the index runs for workers to search (see lshindex);
        ``recent_blocks``: at least the number of blocks decided while one is with a worker."""
        self.config = config
        bands, _ = config.lsh_params()
        self.exact = KeyIndex(1, np.uint64, publish_dir, "exact", recent_blocks)
        self.bands = KeyIndex(bands, np.uint32, publish_dir, "bands", recent_blocks)
        self.rep_keys: array = array("Q")  # type: ignore[type-arg]
        self.members: array = array("I")  # type: ignore[type-arg]
        self.state_dir = config.state_dir
        self._tmp: str | None = None
        offsets = None
        self._lock: int | None = None
        self.generation = 0  # of the --state loaded (0: none yet); save() writes the next one
        if self.state_dir:
            self._lock = _lock_state(self.state_dir, config.wait)  # before reading: see what the last run left
            offsets = self._load_state(self.state_dir)
            store_path = os.path.join(self.state_dir, "shingles.bin")
        else:
            self._tmp = tempfile.mkdtemp(prefix="still-dedup-")
            store_path = os.path.join(self._tmp, "shingles.bin")
        self.store = ShingleStore(store_path, offsets)

    def _load_state(self, state_dir: str) -> array | None:  # type: ignore[type-arg]
        manifest_path = os.path.join(state_dir, "manifest.json")
        if not os.path.exists(manifest_path):
            os.makedirs(state_dir, exist_ok=True)
            return None
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            raise StillError(f"{manifest_path}: unreadable dedup state ({exc})") from exc
        self.generation = int(manifest.get("generation", 0))
        expected = self.config.manifest()
        stored = manifest.get("params", {})
        diffs = [
            f"{k} {stored.get(k)!r} (stored) != {v!r} (this run)" for k, v in expected.items() if stored.get(k) != v
        ]
        if diffs:
            raise StillError(
                f"{state_dir}: dedup state was built with other parameters: {'; '.join(diffs)}. "
                "Use the same options, or a new --state directory."
            )
        data = np.load(os.path.join(state_dir, manifest["arrays"]))
        self.exact.load(data["exact_keys"], data["exact_ids"])
        self.bands.load(data["band_keys"], data["band_ids"])
        self.rep_keys = array("Q", data["rep_keys"].tolist())
        self.members = array("I", data["members"].tolist())
        return array("Q", data["offsets"].tolist())

    def exact_lookup(self, keys: np.ndarray, since: int = 0) -> dict[int, set[int]]:
        return self.exact.lookup(keys.reshape(-1, 1), since)

    def band_lookup(self, band_keys: np.ndarray, since: int = 0) -> dict[int, set[int]]:
        return self.bands.lookup(band_keys, since)

    def snapshot(self) -> IndexSnapshot:
        """What a worker searches for a block sent now (released after the block is decided)."""
        return IndexSnapshot(self.exact.snapshot(), self.bands.snapshot(), len(self.rep_keys))

    def release(self, snapshot: IndexSnapshot) -> None:
        self.exact.release(snapshot.exact)
        self.bands.release(snapshot.bands)

    def shingles(self, rep: int) -> np.ndarray:
        return self.store.get(rep)

    def rep_key(self, rep: int) -> int:
        return int(self.rep_keys[rep])

    def add_member(self, rep: int) -> int:
        self.members[rep] += 1
        return int(self.members[rep]) - 1

    def next_rep(self) -> int:
        self.rep_keys.append(0)
        self.members.append(1)
        return len(self.rep_keys) - 1

    def commit(self, reps: list[int], items: list[Item], band_keys: np.ndarray) -> None:
        if not reps:
            return
        exact = np.fromiter((it.exact for it in items), dtype=np.uint64, count=len(items))
        self.add_reps(np.asarray(reps, dtype=np.uint32), exact, band_keys, [it.shingles for it in items])

    def add_reps(self, ids: np.ndarray, exact: np.ndarray, band_keys: np.ndarray, sets: Sequence[np.ndarray]) -> None:
        """Index new representatives ``ids`` (from next_rep, ascending) by their exact keys, band
        keys (rows) and shingle sets; the staged plan's commit adds its representatives here too."""
        for rep, key in zip(ids.tolist(), exact.tolist()):
            self.rep_keys[rep] = key
        self.exact.add(exact.reshape(-1, 1), ids)
        if self.config.near:
            self.bands.add(band_keys, ids)
        self.store.append(sets)

    def save(self, note: dict[str, Any] | None = None) -> None:
        """Write the arrays under a new name, then switch the manifest atomically (``note``: more
        manifest keys, e.g. the staged plan that made this generation)."""
        assert self.state_dir
        self.store.file.flush()
        os.fsync(self.store.file.fileno())
        exact = self.exact.state()
        bands = self.bands.state()
        generation = 1
        manifest_path = os.path.join(self.state_dir, "manifest.json")
        old_arrays = None
        if os.path.exists(manifest_path):
            with open(manifest_path) as f:
                old = json.load(f)
            generation = int(old.get("generation", 0)) + 1
            old_arrays = old.get("arrays")
        arrays_name = f"index-{generation}.npz"
        tmp_arrays = os.path.join(self.state_dir, arrays_name + ".part")
        with open(tmp_arrays, "wb") as f:
            np.savez(
                f,
                exact_keys=exact["keys"],
                exact_ids=exact["ids"],
                band_keys=bands["keys"],
                band_ids=bands["ids"],
                rep_keys=np.asarray(self.rep_keys, dtype=np.uint64),
                members=np.asarray(self.members, dtype=np.uint32),
                offsets=np.asarray(self.store.offsets, dtype=np.uint64),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_arrays, os.path.join(self.state_dir, arrays_name))
        manifest = {
            "tool": "still dedup",
            "generation": generation,
            "arrays": arrays_name,
            "representatives": len(self.rep_keys),
            "shingle_words": int(self.store.offsets[-1]),
            "params": self.config.manifest(),
            **(note or {}),
        }
        tmp_manifest = manifest_path + ".part"
        with open(tmp_manifest, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_manifest, manifest_path)
        if old_arrays and old_arrays != arrays_name:
            try:
                os.unlink(os.path.join(self.state_dir, old_arrays))
            except OSError:
                pass

    def close(self, success: bool) -> None:
        self.store.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def nbytes(self) -> int:
        """RAM held by the index (the shingle store is on disk)."""
        return (
            self.exact.nbytes
            + self.bands.nbytes
            + self.rep_keys.itemsize * len(self.rep_keys)
            + self.members.itemsize * len(self.members)
            + self.store.offsets.itemsize * len(self.store.offsets)
        )


def key_text(config: DedupConfig, rec: Record) -> str:
    """The text that decides whether two records are duplicates (raises BadInput without it)."""
    return features_key_text(config.key, config.fields, rec)


def _union(hits: dict[int, set[int]], more: dict[int, set[int]]) -> dict[int, set[int]]:
    """Per row, the hits of both searches (this process's and a worker's)."""
    for row, reps in more.items():
        hits.setdefault(row, set()).update(reps)
    return hits


def _distinct(ordered: np.ndarray) -> int:
    return int(ordered.size and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash multisets taken as sets.

    |A & B| = |A| + |B| - |A | B|, the distinct counts of the sorted sets and of their sorted
    concatenation: three sorts and no np.unique (whose Python overhead dominated at ~250
    shingles). Sorting every set once in the workers would save the two small sorts, but costs
    more than it saves below ~3 workers (measured: +50% signing time for -20% of the parent's)."""
    if a.size == 0 or b.size == 0:
        return 1.0 if a.size == b.size else 0.0
    both = np.concatenate((a, b))
    both.sort()
    union = _distinct(both)
    inter = _distinct(np.sort(a)) + _distinct(np.sort(b)) - union
    return float(inter / union)


class Deduper:
    """Decides, block by block, which records are representatives and which are duplicates."""

    def __init__(
        self, config: DedupConfig, stats: RunStats, publish_dir: str | None = None, in_flight: int = 0
    ) -> None:
        self.config = config
        self.stats = stats
        self.fields = config.fields
        self.bands, self.rows = config.lsh_params()
        self.index = MemoryIndex(config, publish_dir, in_flight + 1 if publish_dir else 0)
        self.clusters: dict[int, list[dict[str, Any]]] | None = {} if config.clusters_path else None
        self.rep_info: dict[int, dict[str, Any]] = {}
        # (representative, response key) of every kept record, with --key query
        self.kept_responses: set[tuple[int, int]] = set()
        self.beyond_max = 0  # records dropped only because their query had --max-per-key already

    # -- features -------------------------------------------------------------------------
    def key_text(self, rec: Record) -> str:
        return key_text(self.config, rec)

    def item(self, rec: Record, index: int, text: str) -> Item:
        return Item(rec, index, text=text, response_key=response_key(self.config.key, self.fields, rec))

    def take(self, items: list[Item], found: RecordFeatures, stats: RunStats) -> list[Item]:
        """The items the workers found a key text for, with their response keys; the others go
        to the --on-error policy (in input order, as if found here)."""
        if found.problems:
            bad = dict(found.problems)
            for row, message in found.problems:
                stats.reject(items[row].rec, message)
            items = [it for row, it in enumerate(items) if row not in bad]
        for it, key in zip(items, found.response_keys):
            it.response_key = key
        return items

    def attach(self, items: list[Item], feats: BlockFeatures) -> None:
        """Give each item its exact key and shingle set from the block's features."""
        for row, (it, key) in enumerate(zip(items, feats.exact.tolist())):
            it.exact = key
            it.shingles = feats.shingles(row)
            it.text = ""  # signed: the key text is no longer needed

    # -- decisions ------------------------------------------------------------------------
    def decide(self, items: list[Item], feats: BlockFeatures) -> None:
        """Assign each item (given in priority order, with its block's features) to a representative."""
        if not items:
            return
        self.attach(items, feats)
        band_keys = feats.band_keys
        exact_keys = np.fromiter((it.exact for it in items), dtype=np.uint64, count=len(items))
        # representatives numbered from feats.since on (all of them without a worker's snapshot)
        # are searched here; a worker searched those before
        exact_hits = _union(self.index.exact_lookup(exact_keys, feats.since), feats.known_exact)
        band_hits: dict[int, set[int]] = {}
        if self.config.near:
            band_hits = _union(self.index.band_lookup(band_keys, feats.since), feats.known_bands)
        local_exact: dict[int, int] = {}
        local_sets: dict[int, np.ndarray] = {}
        neighbours = feats.earlier
        new_reps: list[int] = []
        new_rows: list[int] = []
        threshold = self.config.threshold
        # exact copies of a record that joined a cluster earlier in this block join it the same way
        local_members: dict[int, tuple[int, float]] = {}
        for row, it in enumerate(items):
            exact_rep = exact_hits.get(row)
            rep = min(exact_rep) if exact_rep else local_exact.get(it.exact)
            if rep is not None:
                it.rep, it.jaccard, it.match = rep, 1.0, "exact"
                continue
            member = local_members.get(it.exact)
            if member is not None:
                it.rep, it.jaccard, it.match = member[0], member[1], "near"
                continue
            earlier = neighbours.get(row)
            hits = band_hits.get(row)
            if hits or earlier:
                candidates = set(hits) if hits else set()
                if earlier:
                    # earlier records of this block that share a band and became representatives:
                    # the same candidates the index would give, so blocks never change the answer
                    # (and the staged plan can replay the decisions from its edges)
                    candidates.update(items[i].rep for i in earlier if items[i].match is None)
                best, best_j = -1, -1.0
                for cand in sorted(candidates):
                    other = local_sets.get(cand)
                    j = jaccard(it.shingles, other if other is not None else self.index.shingles(cand))
                    if j >= threshold and j > best_j:
                        best, best_j = cand, j
                if best >= 0:
                    it.rep, it.jaccard, it.match = best, best_j, "near"
                    local_members[it.exact] = (best, best_j)
                    continue
            rep = self.index.next_rep()
            it.rep, it.jaccard, it.match, it.rank = rep, 1.0, None, 0
            local_exact[it.exact] = rep
            local_sets[rep] = it.shingles
            new_reps.append(rep)
            new_rows.append(row)
        rows_idx = np.asarray(new_rows, dtype=np.int64)
        self.index.commit(
            new_reps, [items[r] for r in new_rows], band_keys[rows_idx] if self.config.near else band_keys
        )
        for it in items:
            seen = None if it.response_key is None else (it.rep, it.response_key)
            if it.match is not None and seen is not None and seen in self.kept_responses:
                it.match, it.rank = "record", -1  # the same query and response again: no new place
            elif it.match is not None:
                it.rank = self.index.add_member(it.rep)
            if seen is not None and self.kept(it):
                self.kept_responses.add(seen)
            if self.clusters is not None:
                self._note_cluster(it)
            it.shingles = _EMPTY_SET  # decided: the index has the representatives' sets

    def _note_cluster(self, it: Item) -> None:
        assert self.clusters is not None
        info = {
            "id": self._safe_id(it.rec),
            "source": it.rec.source,
            "line": it.rec.line,
            "jaccard": round(it.jaccard, 4),
            "match": it.match,
            "rank": it.rank,
            "kept": self.kept(it),
        }
        if it.match is None:
            self.rep_info[it.rep] = info
        else:
            members = self.clusters.setdefault(it.rep, [])
            members.append(info)

    def _safe_id(self, rec: Record) -> str | None:
        try:
            return self.fields.record_id(rec)
        except StillError:
            return None

    def annotate(self, it: Item) -> None:
        if not self.config.mark:
            return
        data = it.rec.changed()
        data["dedup"] = {
            "cluster": format(self.index.rep_key(it.rep) if it.match else it.exact, "016x"),
            "representative": it.match is None,
            "jaccard": round(it.jaccard, 4),
            "rank": it.rank,
            "match": it.match,
        }

    def kept(self, it: Item) -> bool:
        return 0 <= it.rank < self.config.max_per_key

    def drop_reason(self, it: Item) -> str:
        """What a dropped record is: named for what it is, not for the mechanism."""
        if it.match == "near":
            return "near duplicate"
        if it.match == "record" or it.response_key is None:
            return "exact duplicate"
        # the same (normalised) query with another response: a sample beyond the cap
        self.beyond_max += 1
        return "same query beyond --max-per-key"

    def warn_multi_sample(self) -> None:
        if self.beyond_max and not self.config.mark:
            k = self.config.max_per_key
            self.stats.warn(
                f"{self.beyond_max} records were other responses to a query already kept {k} time(s) "
                f"(--max-per-key {k}); for multi-sample data give --max-per-key K to keep up to K "
                "responses per query, or --key query+response to drop only repeated pairs"
            )

    def finish(self, success: bool, commit_later: list[Callable[[], None]] | None = None) -> None:
        """Close the index; a --state index is saved on success, or, given ``commit_later``, by
        the callback put there (the caller runs it once its output is in place)."""
        self.stats.extra["index_bytes"] = self.index.nbytes
        index = self.index
        if success and index.state_dir:
            if commit_later is not None:

                def commit() -> None:
                    index.save()
                    index.close(True)

                commit_later.append(commit)
                return
            index.save()
        index.close(success)

    def write_clusters(self) -> None:
        if self.clusters is None or not self.config.clusters_path:
            return
        from still.core.jsonl import AtomicOutput

        with AtomicOutput(self.config.clusters_path) as out:
            for rep in sorted(self.clusters):
                members = self.clusters[rep]
                head = self.rep_info.get(rep, {"id": None, "source": None, "line": None, "note": "earlier run"})
                line = {
                    "cluster": format(self.index.rep_key(rep), "016x"),
                    "size": 1 + len(members),
                    "representative": head,
                    "members": members,
                }
                out.write(orjson.dumps(line) + b"\n")


def _priority(config: DedupConfig, rec: Record, key_text: str) -> tuple[float, int]:
    """Sort key for --keep longest / max:FIELD: best first, ties broken by content, not position."""
    tie = xxhash.xxh3_64_intdigest(rec.raw or b"")
    if config.keep == "longest":
        return (-float(len(key_text)), tie)
    value = get_path(rec.data, config.keep[4:])
    if is_missing(value) or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(config.keep[4:])
    return (-float(value), tie)


def dedup(
    records: Iterable[Record],
    config: DedupConfig,
    stats: RunStats,
    commit_later: list[Callable[[], None]] | None = None,
) -> Iterator[Record]:
    """Yield the records to keep (all of them, annotated, with ``mark``), in input order.

    With ``commit_later`` a --state index is not saved when the records run out: a callback that
    saves it is appended there, for the caller to run after the output has been written and
    renamed (else a failed output would leave state saying the lost records were seen)."""
    bands, rows = config.lsh_params()
    stats.extra["lsh"] = {"num_perm": config.num_perm, "bands": bands, "rows": rows, "threshold": config.threshold}
    keep_freed_memory()  # this process frees and takes the same arrays again for every block
    source = FeatureSource(config.feature_params(), config.workers)
    stats.extra["workers"] = source.workers
    success = False
    try:
        deduper = Deduper(config, stats, source.spill_dir, source.in_flight)
    except BaseException:
        source.close()
        raise
    try:
        if config.keep == "first":
            yield from _dedup_streaming(records, deduper, stats, source)
        else:
            yield from _dedup_by_priority(records, deduper, stats, source)
        success = True
    finally:
        source.close()
        deduper.finish(success, commit_later)
    deduper.warn_multi_sample()
    deduper.write_clusters()


def _lock_state(state_dir: str, wait: bool) -> int:
    """An exclusive flock on ``state_dir/lock`` (held until the index closes or the process ends)."""
    import fcntl

    os.makedirs(state_dir, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            os.close(fd)
            raise StillError(
                f"{state_dir}: another still dedup run is using this --state directory; "
                "pass --wait to wait for it, or use another directory"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _key_text(deduper: Deduper, rec: Record, stats: RunStats) -> str | None:
    """The record's key text, or None after the --on-error policy took a record without one."""
    try:
        return deduper.key_text(rec)
    except BadInput as exc:
        stats.reject(rec, exc.message)
        return None


def _emit(deduper: Deduper, items: list[Item], stats: RunStats) -> Iterator[Record]:
    for it in items:
        deduper.annotate(it)
        if deduper.config.mark or deduper.kept(it):
            yield it.rec
        else:
            stats.drop(deduper.drop_reason(it))


def _snapshot(deduper: Deduper, source: FeatureSource) -> IndexSnapshot | None:
    """With workers, each block is sent with the index as it is (they search it for the block)."""
    return deduper.index.snapshot() if source.parallel else None


def _decided(deduper: Deduper, snapshot: IndexSnapshot | None) -> None:
    if snapshot is not None:
        deduper.index.release(snapshot)


def _raw_block(block: list[Item]) -> RawBlock:
    """The block's lines, and where they are when they are one stretch of one plain file."""
    lines = [it.rec.to_bytes() for it in block]
    first, last = block[0].rec, block[-1].rec
    start, end = getattr(first, "offset", -1), getattr(last, "offset", -1)
    if start >= 0 and end >= 0 and first.source == last.source and end - start == sum(map(len, lines[:-1])):
        return RawBlock(lines, os.path.abspath(first.source), start)
    return RawBlock(lines)


def _dedup_streaming(
    records: Iterable[Record], deduper: Deduper, stats: RunStats, source: FeatureSource
) -> Iterator[Record]:
    Block = tuple[list[Item], IndexSnapshot | None]

    def blocks() -> Iterator[tuple[Block, RawBlock, IndexSnapshot | None]]:
        # raw lines go to the workers, which parse and check them and find the key texts themselves
        block: list[Item] = []
        size = deduper.config.block_size
        for index, rec in enumerate(records):
            block.append(Item(rec, index))
            if len(block) >= size:
                snapshot = _snapshot(deduper, source)
                yield (block, snapshot), _raw_block(block), snapshot
                block = []
        if block:
            snapshot = _snapshot(deduper, source)
            yield (block, snapshot), _raw_block(block), snapshot

    for (block, snapshot), found in source.record_features(blocks()):
        items = deduper.take(block, found, stats)
        deduper.decide(items, found.features)
        _decided(deduper, snapshot)
        yield from _emit(deduper, items, stats)


def _dedup_by_priority(
    records: Iterable[Record], deduper: Deduper, stats: RunStats, source: FeatureSource
) -> Iterator[Record]:
    """--keep longest / max:FIELD: spool the input, decide in priority order, emit in input order."""
    config = deduper.config
    spool = tempfile.TemporaryFile(prefix="still-dedup-spool-")
    try:
        where: list[tuple[int, int, str, int]] = []  # offset, length, source, line
        order: list[tuple[float, int, int]] = []
        offset = 0
        for rec in records:
            text = _key_text(deduper, rec, stats)
            if text is None:
                continue
            try:
                prio = _priority(config, rec, text)
            except ValueError as exc:
                stats.reject(rec, f"--keep {config.keep}: field {exc} is missing or not a number")
                continue
            raw = rec.to_bytes()
            spool.write(raw)
            order.append((prio[0], prio[1], len(where)))
            where.append((offset, len(raw), rec.source, rec.line))
            offset += len(raw)
        spool.flush()
        order.sort()
        decisions: list[Item | None] = [None] * len(where)

        def load(i: int) -> Record:
            off, length, source, line = where[i]
            raw = os.pread(spool.fileno(), length, off)
            return Record(orjson.loads(raw), raw, source, line)

        size = config.block_size

        def blocks() -> Iterator[tuple[tuple[list[Item], IndexSnapshot | None], list[str], IndexSnapshot | None]]:
            for start in range(0, len(order), size):
                block = []
                for _, _, i in order[start : start + size]:
                    rec = load(i)
                    block.append(deduper.item(rec, i, deduper.key_text(rec)))
                snapshot = _snapshot(deduper, source)
                yield (block, snapshot), [it.text for it in block], snapshot

        for (block, snapshot), feats in source.features(blocks()):
            deduper.decide(block, feats)
            _decided(deduper, snapshot)
            for it in block:
                it.rec = Record({}, None, it.rec.source, it.rec.line)  # free the parsed copy
                decisions[it.index] = it
        for i in range(len(where)):
            decided = decisions[i]
            assert decided is not None
            decided.rec = load(i)
            yield from _emit(deduper, [decided], stats)
    finally:
        spool.close()
