"""Per-block dedup features (exact keys, shingle sets, MinHash signatures, LSH band keys),
computed in the calling process or in worker processes.

Features of a text depend on that text only (never on its block or its neighbours), so
computing blocks in other processes and taking the results back in submission order gives
exactly the bytes one process gives: that is what makes ``still dedup --workers N`` output
identical for every N. Decisions (index lookups, Jaccard checks, the greedy first-representative
rule) stay in the parent: they are sequential by nature and cheap next to signing.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import xxhash

from still.core import minhash as mh
from still.core.errors import BadInput, StillError
from still.core.fields import Fields
from still.core.jsonl import parse_object
from still.core.lshindex import PublishedRun, Run, load_run, lookup_runs
from still.core.memtune import keep_freed_memory
from still.core.procpool import start_forkserver
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


# where SpillRing.put placed each array: its first word, dtype and shape
Placement = dict[str, tuple[int, str, tuple[int, ...]]]


@dataclass
class BlockFeatures:
    """Features of one block; shingle sets travel as one concatenated array and offsets (the
    MinHash signatures do not: the decisions need their band keys only)."""

    exact: np.ndarray  # uint64 per text
    shingle_data: np.ndarray  # uint64, all sets concatenated
    shingle_offsets: np.ndarray  # int64, len(texts) + 1
    band_keys: np.ndarray  # uint32 [n, bands] (n x 0 without near)
    # rows sharing a band with earlier rows of the block (first of their exact key only)
    earlier: dict[int, set[int]] = field(default_factory=dict)
    spilled: str | None = None  # from a worker: shingle_data is in this file, not here
    # from a worker: the arrays are in its slot of the ring, placed so
    in_ring: Placement | None = None
    # from a worker given an IndexSnapshot: the hits among representatives numbered below ``since``
    since: int = 0
    known_exact: dict[int, set[int]] = field(default_factory=dict)
    known_bands: dict[int, set[int]] = field(default_factory=dict)

    def shingles(self, row: int) -> np.ndarray:
        return self.shingle_data[self.shingle_offsets[row] : self.shingle_offsets[row + 1]]


@dataclass(frozen=True)
class IndexSnapshot:
    """The dedup index as a block was sent to a worker: its published run files and the number
    of representatives they hold (the deciding process searches the rest itself)."""

    exact: list[PublishedRun]
    bands: list[PublishedRun]
    since: int


@dataclass
class RawBlock:
    """A block of raw JSONL lines, each ending in a newline; when they are one stretch of a plain
    file, ``path`` (absolute) and ``start`` say where, and a worker reads them there itself."""

    lines: list[bytes]
    path: str | None = None
    start: int = 0

    def data(self) -> bytes:
        return b"".join(self.lines)


@dataclass(frozen=True)
class FileStretch:
    """What a worker is sent for a :class:`RawBlock` in a file: where, how many bytes, and their
    xxh3 hash, so a file changed since this process read it fails the run instead of giving
    another answer."""

    path: str
    start: int
    length: int
    digest: int
    remove: bool = False  # a file written for the worker, removed once read

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), self.length, self.start)
        if self.remove:
            os.unlink(self.path)
            return data
        if len(data) == self.length - 1 and not data.endswith(b"\n"):
            data += b"\n"  # the file's last line has no newline: the reader gave it one
        if len(data) != self.length or xxhash.xxh3_64_intdigest(data) != self.digest:
            raise StillError(f"{self.path}: changed while still dedup was reading it; run again on a copy")
        return data


@dataclass
class RecordFeatures:
    """Features of a block of raw records: those with a key text, in order, and the others."""

    features: BlockFeatures  # of the records with a key text
    response_keys: list[int | None]  # of the same records
    problems: list[tuple[int, str]]  # (row in the block, what is wrong) of the records without one


def earlier_neighbours(band_keys: np.ndarray, eligible: np.ndarray) -> dict[int, set[int]]:
    """For each eligible row, the earlier eligible rows of the block sharing at least one band."""
    rows = np.flatnonzero(eligible)
    out: dict[int, set[int]] = {}
    if rows.size < 2:
        return out
    for band in range(band_keys.shape[1]):
        keys = band_keys[rows, band]
        order = np.argsort(keys, kind="stable")  # equal keys keep ascending row order
        ordered = keys[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if same.size == 0:
            continue
        run_starts = same[np.concatenate(([True], same[1:] != same[:-1] + 1))]
        for start in run_starts.tolist():
            stop = start + 1
            while stop < ordered.size and ordered[stop] == ordered[start]:
                stop += 1
            members = rows[order[start:stop]].tolist()
            for t in range(1, len(members)):
                out.setdefault(members[t], set()).update(members[:t])
    return out


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
        band_keys = mh.band_keys(sigs, p.bands, p.rows)
        first = np.zeros(n, dtype=bool)
        first[np.unique(exact, return_index=True)[1]] = True
        return BlockFeatures(
            exact, data.astype(np.uint64, copy=False), offsets, band_keys, earlier_neighbours(band_keys, first)
        )

    def records(self, lines: bytes) -> RecordFeatures:
        """Parse and check a block of raw JSONL lines (each ending in a newline) and find their
        key texts here too, so that the process reading them does no more per record than read,
        look up and decide (it hands this process unparsed lines)."""
        p = self.params
        texts: list[str] = []
        response_keys: list[int | None] = []
        problems: list[tuple[int, str]] = []
        for row, raw in enumerate(lines.split(b"\n")[:-1]):
            data = parse_object(raw)
            if isinstance(data, str):  # not a JSON object: the reader's message (it parses the newline too)
                problem = parse_object(raw + b"\n")
                problems.append((row, problem if isinstance(problem, str) else data))
                continue
            rec = Record(data, raw, "", 0)
            try:
                texts.append(key_text(p.key, p.fields, rec))
            except BadInput as exc:
                problems.append((row, exc.message))
                continue
            response_keys.append(response_key(p.key, p.fields, rec))
        return RecordFeatures(self(texts), response_keys, problems)


_EMPTY_U64 = np.empty(0, dtype=np.uint64)
WORKER_PRELOAD = [__name__]  # what the workers' forkserver imports once
_worker_maker: FeatureMaker | None = None
_worker_runs: dict[str, dict[str, Run]] = {}  # per index: the published runs this worker has mapped
_prestarted: tuple[int, Any] | None = None  # (workers, pool) forked by prestart_workers
# the ring prestart_workers shares with the workers it forks (None in a forkserver's workers)
_forked_ring: SpillRing | None = None
_RING_ARRAYS = ("shingle_data", "shingle_offsets", "exact", "band_keys")  # the BlockFeatures put in a ring slot
_SLOT_BYTES = 16 << 20  # a block of 2,048 texts of ~1,000 words fits (250 words: 4 MB)
_RING_BYTES = 1 << 30  # address space at most (pages are taken when first written, then kept)


@dataclass(frozen=True)
class SpillRing:
    """Memory shared with the pool's workers, who write each block's arrays (shingle sets, exact
    and band keys) into its slot (one slot per block in flight); this process reads them there.
    The shingle sets in a file per block instead cost a worker ~10 ms of kernel time per 4 MB
    written on ext4 (~0.5 CPU-s per 100k documents of 250 words) and this process its page
    faults and unlinks; the keys through the pool's pipe (~200 kB per block, the pipe holds 64
    kB) kept a worker waiting ~3% of the run for this process to read them. Made before the
    workers fork, which is how they have it; a block larger than a slot goes as before."""

    memory: mmap.mmap
    slots: int
    slot_words: int

    @classmethod
    def create(cls, slots: int) -> SpillRing:
        slot_words = min(_SLOT_BYTES, _RING_BYTES // slots) // 8
        return cls(mmap.mmap(-1, slots * slot_words * 8, flags=mmap.MAP_SHARED), slots, slot_words)

    def put(self, slot: int, arrays: dict[str, np.ndarray]) -> Placement | None:
        """Copy C-contiguous arrays into a slot (each at a multiple of 8 bytes); where each went
        (word, dtype, shape), or None when they do not fit."""
        sizes = [(a.nbytes + 7) // 8 for a in arrays.values()]
        if sum(sizes) > self.slot_words:
            return None
        placed: Placement = {}
        at = slot * self.slot_words
        for (name, array), words in zip(arrays.items(), sizes):
            target = np.frombuffer(self.memory, np.uint8, count=array.nbytes, offset=at * 8)
            target[:] = array.reshape(-1).view(np.uint8)
            placed[name] = (at, array.dtype.str, array.shape)
            at += words
        return placed

    def take(self, placed: Placement) -> dict[str, np.ndarray]:
        """Views of what :meth:`put` placed (valid until its slot is written again)."""
        out: dict[str, np.ndarray] = {}
        for name, (at, dtype, shape) in placed.items():
            count = int(np.prod(shape, dtype=np.int64))
            out[name] = np.frombuffer(self.memory, np.dtype(dtype), count=count, offset=at * 8).reshape(shape)
        return out


@dataclass(frozen=True)
class WorkerJob:
    """What every task tells its worker: the signing parameters and where to spill (a pool
    started before the command knew them serves it all the same)."""

    params: FeatureParams
    spill_dir: str


def _maker(job: WorkerJob) -> FeatureMaker:
    """This worker's maker for the job's parameters (made again only when they change)."""
    global _worker_maker
    if _worker_maker is None or _worker_maker.params != job.params:
        keep_freed_memory()
        _worker_maker = FeatureMaker(job.params)
    return _worker_maker


def prestart_workers(workers: int) -> None:
    """Fork ``still dedup --workers`` pool now, for the next :class:`FeatureSource` of that many
    workers to take. The command calls this once the signing code is imported and before it
    opens any file, takes a lock or starts a thread, so the workers inherit none of those and
    start ready to sign (a forkserver would import everything again: ~0.25 CPU-s and ~0.15 s
    later), and share a :class:`SpillRing` with it. Elsewhere the FeatureSource starts its own
    (forkserver) pool, whose workers spill to files."""
    global _prestarted, _forked_ring
    n = resolve_workers(workers)
    # fork only on Linux: on macOS system libraries are not safe to use in a forked child
    if n > 1 and _prestarted is None and sys.platform.startswith("linux"):
        keep_freed_memory()  # the workers inherit it
        _forked_ring = SpillRing.create(_blocks_in_flight(n) + 1)
        ctx = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(n - 1, mp_context=ctx, initializer=_plain_signals)
        pool.submit(_plain_signals)  # a fork pool forks every worker at its first task: now
        _prestarted = (n, pool)


def _plain_signals() -> None:
    """A forked worker has the command's signal handlers: SIGTERM (the pool's or a whole process
    group's) ends it quietly, and Ctrl-C is the command's to handle (it then ends the pool)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _runs(kind: str, published: list[PublishedRun], tables: int, key_dtype: np.dtype[Any]) -> list[Run]:
    """The snapshot's runs of one index, mapped once per worker; runs merged away are unmapped."""
    mapped = _worker_runs.setdefault(kind, {})
    files = {path for path, _ in published}
    for gone in [path for path in mapped if path not in files]:
        del mapped[gone]
    for path, n in published:
        if path not in mapped:
            mapped[path] = load_run((path, n), tables, key_dtype)
    return [mapped[path] for path, _ in published]


def _finish(
    seq: int, spill_dir: str, feats: BlockFeatures, snapshot: IndexSnapshot | None, slot: int | None
) -> BlockFeatures:
    """Search the snapshot's runs for the block, then put its arrays in its ring slot (or its
    shingle sets in a file) for the parent to take there instead of through the pool's pipe: the
    shingle sets are as large as the input, and unpickling them was the parent's largest cost
    after its decisions (0.9 CPU-s per 100k documents of 250 words)."""
    if snapshot is not None:
        feats.since = snapshot.since
        exact_dtype, band_dtype = np.dtype(np.uint64), np.dtype(np.uint32)
        exact_runs = _runs("exact", snapshot.exact, 1, exact_dtype)
        feats.known_exact = lookup_runs(exact_runs, feats.exact.reshape(-1, 1), exact_dtype)
        if feats.band_keys.shape[1]:
            band_runs = _runs("bands", snapshot.bands, feats.band_keys.shape[1], band_dtype)
            feats.known_bands = lookup_runs(band_runs, feats.band_keys, band_dtype)
    ring = _forked_ring
    if slot is not None and ring is not None:
        arrays = {name: np.ascontiguousarray(getattr(feats, name)) for name in _RING_ARRAYS}
        placed = ring.put(slot, arrays)
        if placed is not None:
            for name in _RING_ARRAYS:
                setattr(feats, name, _EMPTY_U64)
            feats.in_ring = placed
            return feats
    path = os.path.join(spill_dir, f"{seq}.bin")
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(feats.shingle_data).data)
    feats.shingle_data, feats.spilled = _EMPTY_U64, path
    return feats


def _worker_features(
    seq: int, job: WorkerJob, work: tuple[list[str], IndexSnapshot | None, int | None]
) -> BlockFeatures:
    texts, snapshot, slot = work
    return _finish(seq, job.spill_dir, _maker(job)(texts), snapshot, slot)


def _worker_record_features(
    seq: int, job: WorkerJob, work: tuple[FileStretch, IndexSnapshot | None, int | None]
) -> RecordFeatures:
    stretch, snapshot, slot = work
    found = _maker(job).records(stretch.read())
    _finish(seq, job.spill_dir, found.features, snapshot, slot)
    return found


def _result(future: Any) -> Any:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise StillError(
            "a --workers process ended unexpectedly (killed, or out of memory?); run again, with fewer --workers"
        ) from exc


def _map_spilled(feats: BlockFeatures, ring: SpillRing | None) -> None:
    """Take a worker's arrays where it put them: in its ring slot (views: the slot is not written
    again before the block is decided), or its shingle sets in a file, mapped (read only, zero
    copy) and unlinked at once: the mapping keeps the data until the last array viewing it is gone."""
    if feats.in_ring is not None:
        assert ring is not None
        for name, array in ring.take(feats.in_ring).items():
            setattr(feats, name, array)
        feats.in_ring = None
        return
    if feats.spilled is None:
        return
    path, feats.spilled = feats.spilled, None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            feats.shingle_data = np.frombuffer(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ), np.uint64)
    os.unlink(path)


def _blocks_in_flight(workers: int) -> int:
    """Blocks out at once with ``workers`` processes: the pool's (three per pool worker), as many
    finished ones waiting their turn, and those signed ahead here."""
    return 2 * _pool_in_flight(workers) + FeatureSource.LOCAL_AHEAD if workers > 1 else 0


def _pool_in_flight(workers: int) -> int:
    """Three per pool worker: one it signs and two queued, so that it does not run dry while
    this process signs a block of its own (measured: with two, a worker waited 5% of the run)."""
    return 3 * (workers - 1)


def resolve_workers(workers: int) -> int:
    """``0`` means every core this process may run on."""
    if workers > 0:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(slots=True)
class _Pending(Generic[T]):
    """A block out for signing: its result (a future of the pool's, or the features when signed
    here), and for a pool's block its work (signed here instead if no worker has started it) and
    the ring slot its arrays come back in."""

    payload: T
    result: Any
    here: bool
    work: Any = None
    slot: int | None = None


class FeatureSource:
    """Features of blocks in submission order, from this process alone (1 worker) or with a pool.

    ``blocks`` yields (payload, work, snapshot); ``features`` yields (payload, BlockFeatures) in
    the same order. A snapshot asks a pool worker to search the index runs it names.

    With N workers, N - 1 are pool processes and the Nth is this one: rather than wait for the
    next block in order, it signs a block further on itself (it searches the whole index for
    those), or takes back the newest block no worker has started. On 2 cores that is 2 busy
    processes instead of 2 workers and a mostly waiting parent competing for the cores
    (measured: 28% more CPU in all for the same work). At most ``in_flight`` blocks are out at
    once, which bounds memory.
    """

    LOCAL_AHEAD = 2  # blocks this process may sign ahead of the one it waits for

    def __init__(self, params: FeatureParams, workers: int) -> None:
        self.workers = resolve_workers(workers)
        self.maker = FeatureMaker(params)
        self.pool: Any = None
        self.ring: SpillRing | None = None  # with a pool forked by prestart_workers
        self.spill_dir: str | None = None
        self.pool_in_flight = _pool_in_flight(self.workers)
        self.in_flight = _blocks_in_flight(self.workers)
        self._starting: threading.Thread | None = None
        self._started: list[Any] = []  # the pool, or what stopped it from starting
        if self.workers > 1:
            global _prestarted
            self.spill_dir = tempfile.mkdtemp(prefix="still-dedup-spill-")
            self.job = WorkerJob(params, self.spill_dir)
            if _prestarted is not None and _prestarted[0] == self.workers:
                self.pool, self.ring, _prestarted = _prestarted[1], _forked_ring, None
            else:
                # The pool starts in a thread: its workers fork from the forkserver once that has
                # imported the signing code; until then this process signs every block itself.
                self._starting = threading.Thread(target=self._start_pool, daemon=True)
                self._starting.start()

    def _start_pool(self) -> None:
        try:
            # forkserver: workers do not inherit this process's open files, locks or threads; the
            # server imports the signing code once and each worker forks from it ready to sign
            ctx = multiprocessing.get_context("forkserver")
            start_forkserver(WORKER_PRELOAD)
            self._started.append(ProcessPoolExecutor(self.workers - 1, mp_context=ctx))
        except BaseException as exc:  # raised again by the thread that reads blocks
            self._started.append(exc)

    @property
    def parallel(self) -> bool:
        """Whether blocks may go to pool workers (each is then sent with an index snapshot)."""
        return self.workers > 1

    def _ready_pool(self) -> Any:
        """The pool once it has started (None until then; tests set STILL_DEDUP_WAIT_FOR_POOL=1 to
        wait for it, so that even a small input reaches the workers)."""
        if self._starting is not None and os.environ.get("STILL_DEDUP_WAIT_FOR_POOL") == "1":
            self._starting.join()
        if self.pool is None and self._starting is not None and not self._starting.is_alive():
            self._starting = None
            started = self._started.pop()
            if isinstance(started, BaseException):
                raise started
            self.pool = started
        return self.pool

    def _ship(self, seq: int, work: Any) -> Any:
        """A block of raw lines goes to its worker as a stretch of a file: of the input itself when
        the lines are one stretch of a plain file, else of a file written here. Through the pool's
        pipe, a thread of this process would write it 64 KiB at a time, taking the GIL for each."""
        if not isinstance(work, RawBlock):
            return work
        if work.path is not None:
            digest = xxhash.xxh3_64()
            for line in work.lines:
                digest.update(line)
            return FileStretch(work.path, work.start, sum(map(len, work.lines)), digest.intdigest())
        assert self.spill_dir is not None
        path = os.path.join(self.spill_dir, f"in-{seq}.jsonl")
        data = work.data()
        with open(path, "wb") as f:
            f.write(data)
        return FileStretch(path, 0, len(data), 0, remove=True)

    def features(
        self, blocks: Iterable[tuple[T, list[str], IndexSnapshot | None]]
    ) -> Iterator[tuple[T, BlockFeatures]]:
        """Features of blocks of key texts (with a snapshot, a worker also searches its runs)."""
        for payload, feats in self._in_order(blocks, self.maker, _worker_features):
            _map_spilled(feats, self.ring)
            yield payload, feats

    def record_features(
        self, blocks: Iterable[tuple[T, RawBlock, IndexSnapshot | None]]
    ) -> Iterator[tuple[T, RecordFeatures]]:
        """Features of blocks of raw JSONL lines (the workers parse them, check them and find the
        key texts)."""
        here = self._local_records
        for payload, found in self._in_order(blocks, here, _worker_record_features):
            _map_spilled(found.features, self.ring)
            yield payload, found

    def _local_records(self, block: RawBlock) -> RecordFeatures:
        return self.maker.records(block.data())

    def _in_order(
        self, blocks: Iterable[tuple[T, Any, IndexSnapshot | None]], here: Any, there: Any
    ) -> Iterator[tuple[T, Any]]:
        if not self.parallel:
            for payload, work, _ in blocks:
                yield payload, here(work)
            return
        pending: deque[_Pending[T]] = deque()
        # ring slots not holding a block's arrays, lowest first (so the fewest pages are ever used)
        free_slots = list(range(self.ring.slots - 1, -1, -1)) if self.ring is not None else []
        source = iter(blocks)
        seq = 0
        exhausted = False

        def take() -> tuple[T, Any, IndexSnapshot | None] | None:
            nonlocal exhausted, seq
            try:
                block = next(source)
            except StopIteration:
                exhausted = True
                return None
            seq += 1
            return block

        unfinished: list[Any] = []  # pool results not yet seen ready
        while True:
            pool = self._ready_pool()
            if pool is not None:
                # a worker's finished block waits here until its turn comes; what keeps the
                # workers busy is how many blocks they have not finished yet
                unfinished = [r for r in unfinished if not r.done()]
                while (
                    not exhausted
                    and len(unfinished) < self.pool_in_flight
                    and len(pending) < self.in_flight
                    and (block := take()) is not None
                ):
                    payload, work, snapshot = block
                    slot = free_slots.pop() if free_slots else None  # None: through a file
                    result = pool.submit(there, seq, self.job, (self._ship(seq, work), snapshot, slot))
                    pending.append(_Pending(payload, result, False, work, slot))
                    unfinished.append(result)
            if not pending:
                if exhausted or (block := take()) is None:
                    return
                payload, work, _ = block  # the pool has not started yet
                pending.append(_Pending(payload, here(work), True))
            head = pending[0]
            waiting = not head.here and not head.result.done()
            if waiting and not exhausted and len(pending) < self.in_flight and (block := take()) is not None:
                payload, work, _ = block  # signed here: no snapshot search, the decisions search it all
                pending.append(_Pending(payload, here(work), True))
                continue
            if waiting and self._sign_unstarted(pending, here, free_slots):
                continue
            pending.popleft()
            yield head.payload, (head.result if head.here else _result(head.result))
            if head.slot is not None:  # decided by now: its arrays are no longer read
                free_slots.append(head.slot)

    @staticmethod
    def _sign_unstarted(pending: deque[_Pending[T]], here: Any, free_slots: list[int]) -> bool:
        """Sign here the newest pool block no worker has started, rather than wait for the head
        (at the end of the input, or with every place in flight taken): the workers' queue is
        deep enough never to run dry while this process signs a block, and this keeps this
        process from waiting on what is left in it at the end."""
        for entry in reversed(pending):
            if not entry.here and entry.result.cancel():  # only a block no worker has taken
                entry.result, entry.here, entry.work = here(entry.work), True, None
                if entry.slot is not None:
                    free_slots.append(entry.slot)
                    entry.slot = None
                return True
        return False

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            self.pool = next((p for p in self._started if not isinstance(p, BaseException)), None)
        if self.pool is not None:
            # a worker's death fails the pool's futures instead of hanging it (as a Pool whose
            # worker died holding its task queue's lock did, e.g. on a process group's SIGTERM)
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.ring = None  # unmapped with the last array viewing it
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None
