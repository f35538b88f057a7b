"""``still grade``: per-query, per-model pass rate, mean score and CV over verified responses, and a
difficulty level, written onto every response line (denormalised, so ``still sample`` needs no join).

Definitions (DeepDistill, arXiv 2504.17565, §2.4 and §3.1): a response passes when its verify score
exceeds its category's threshold; ``pass_rate`` is the fraction of one model's n responses to a query
that pass (Eq. 5); ``cv`` is sigma/mu of those n scores (Eq. 6; ``cv_ddof`` 1 by default, because the
paper's worked examples need the sample std although its formula says 1/n; ``None`` when mu = 0);
``n_truncated`` counts responses cut off (verdict ``truncated`` or finish_reason ``length``), which
count as failures in the pass rate and are reported, never hidden.

Input need not be sorted: pass 1 streams the (verified) records in input order to a spool file and
writes one small key per record (id, model, score, passed, truncated) to memory, or, past
``spill_after`` keys, to ``partitions`` files split by id hash (split again when one is still too
big). Pass 2 groups one partition at a time, computes each query's grade once and writes it to a
results file, pointing every record's slot of a fixed-width index at it. Pass 3 reads the spool,
the index and the results back in input order and splices the grade into each line. Memory holds
at most about ``spill_after`` keys (plus one query's), whatever the input size.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import xxhash

from still.core.errors import BadInput, UsageError
from still.core.fields import Fields, get_path, is_missing
from still.core.grade_levels import LevelConfig, Leveller, ModelGrade
from still.core.jsonl import Record
from still.core.sample import DEEPDISTILL_PASS_THRESHOLDS, coefficient_of_variation, path_getter
from still.core.stats import RunStats
from still.core.verify import VerifyConfig, verify_records

# index slot per record: results offset, results length, input line, source number
_SLOT = struct.Struct("<QIQH")
_RESULT = struct.Struct("<QI")
DEFAULT_SPILL_AFTER = 500_000
DEFAULT_PARTITIONS = 64
_MAX_SPLIT_DEPTH = 4

# key of one response: (seq, id, model, score, passed, truncated)
Key = tuple[int, str, str, float, bool, bool]

BINARY_NOTE = (
    "every score was 0 or 1: CV is then a function of the pass rate (sqrt((1-p)/p) with ddof 0) "
    "and adds nothing over it"
)


@dataclass(frozen=True)
class GradeConfig:
    fields: Fields = field(default_factory=Fields)
    model_field: str = "model"
    category_field: str = "domain"
    score_field: str = "verify.score"
    verdict_field: str = "verify.verdict"
    finish_reason_field: str = "finish_reason"
    pass_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEEPDISTILL_PASS_THRESHOLDS))
    cv_ddof: int = 1
    levels: LevelConfig = field(default_factory=LevelConfig)
    # records with no score are verified in process with this (None: they are rejected)
    verify: VerifyConfig | None = field(default_factory=VerifyConfig)
    spill_after: int = DEFAULT_SPILL_AFTER
    partitions: int = DEFAULT_PARTITIONS

    def validate(self) -> None:
        if self.cv_ddof not in (0, 1):
            raise UsageError("--cv-ddof must be 0 or 1")
        if self.spill_after < 1:
            raise UsageError("--spill-after must be at least 1")
        if self.partitions < 2:
            raise UsageError("partitions must be at least 2")
        self.levels.validate()

    def threshold(self, category: str) -> float:
        t = self.pass_thresholds.get(category, self.pass_thresholds.get("*"))
        if t is None:
            raise UsageError(f"no --pass-threshold for category {category!r} (or give '*=T')")
        return t


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or is_missing(value):
        return None
    return float(value)


def grade_model(scores: list[float], passed: int, truncated: int, ddof: int) -> ModelGrade:
    """One model's statistics over its n responses to a query (DeepDistill Eq. 5 and 6)."""
    scores = sorted(scores)  # float sums in one order: the same bits whatever the input order
    n = len(scores)
    return ModelGrade(
        pass_rate=passed / n,
        mean_score=math.fsum(scores) / n,
        cv=coefficient_of_variation(scores, ddof),
        n=n,
        n_truncated=truncated,
    )


class _Keys:
    """Response keys in memory until ``spill_after``, then in id-hash partition files."""

    def __init__(self, workdir: str, spill_after: int, partitions: int) -> None:
        self.workdir = workdir
        self.spill_after = spill_after
        self.partitions = partitions
        self.held: list[Key] = []
        self.files: list[IO[bytes]] = []
        self.counts: list[int] = []
        self.max_held = 0

    def add(self, key: Key) -> None:
        if not self.files:
            self.held.append(key)
            if len(self.held) >= self.spill_after:
                self._spill()
            return
        i = xxhash.xxh3_64_intdigest(key[1].encode()) % self.partitions
        self.files[i].write(orjson.dumps(key) + b"\n")
        self.counts[i] += 1

    def _spill(self) -> None:
        self.max_held = max(self.max_held, len(self.held))
        for i in range(self.partitions):
            self.files.append(open(os.path.join(self.workdir, f"keys.{i}"), "w+b"))  # noqa: SIM115 - closed in groups
            self.counts.append(0)
        held, self.held = self.held, []
        for key in held:
            self.add(key)

    def groups(self) -> Iterator[list[Key]]:
        """Lists of keys; all keys of one id are in the same list."""
        if not self.files:
            self.max_held = max(self.max_held, len(self.held))
            yield self.held
            return
        for f, count in zip(self.files, self.counts, strict=True):
            yield from self._read(f, count, 1)

    def _read(self, f: IO[bytes], count: int, depth: int) -> Iterator[list[Key]]:
        f.flush()
        f.seek(0)
        if count <= self.spill_after or depth >= _MAX_SPLIT_DEPTH:
            keys: list[Key] = [tuple(orjson.loads(line)) for line in f]
            f.close()
            self.max_held = max(self.max_held, len(keys))
            yield keys
            return
        # still too many keys for memory: split this partition again with a different hash seed
        subs = [tempfile.TemporaryFile(dir=self.workdir) for _ in range(self.partitions)]
        sub_counts = [0] * self.partitions
        for line in f:
            rid = orjson.loads(line)[1]
            i = xxhash.xxh3_64_intdigest(rid.encode(), seed=depth) % self.partitions
            subs[i].write(line)
            sub_counts[i] += 1
        f.close()
        for sub, n in zip(subs, sub_counts, strict=True):
            yield from self._read(sub, n, depth + 1)


@dataclass
class _Summary:
    queries: int = 0
    levels: dict[str, int] = field(default_factory=dict)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    unscored: int = 0
    nonbinary: bool = False
    over_one: dict[str, int] = field(default_factory=dict)

    def add_query(self, grades: dict[str, ModelGrade], level: int | None) -> None:
        self.queries += 1
        label = "none" if level is None else str(level)
        self.levels[label] = self.levels.get(label, 0) + 1
        for model, g in grades.items():
            m = self.models.setdefault(model, {"queries": 0, "responses": 0, "pass_rate_sum": 0.0})
            m["queries"] += 1
            m["responses"] += g.n
            m["pass_rate_sum"] += g.pass_rate

    def as_dict(self, config: GradeConfig, leveller: Leveller, keys: _Keys) -> dict[str, Any]:
        models = {
            name: {
                "queries": int(m["queries"]),
                "responses": int(m["responses"]),
                "mean_pass_rate": round(m["pass_rate_sum"] / m["queries"], 6),
            }
            for name, m in sorted(self.models.items())
        }
        out: dict[str, Any] = {
            "queries": self.queries,
            "models": models,
            "levels": config.levels.scheme,
            "difficulty": dict(sorted(self.levels.items(), key=lambda kv: (kv[0] == "none", len(kv[0]), kv[0]))),
            "cv_ddof": config.cv_ddof,
            "keys_held_max": keys.max_held,
            "spilled": bool(keys.files),
        }
        if leveller.unlevelled:
            out["unlevelled"] = dict(sorted(leveller.unlevelled.items()))
        if self.unscored:
            out["unscored_responses"] = self.unscored
        notes = []
        if self.queries and not self.nonbinary:
            notes.append(BINARY_NOTE)
        for cat, n in sorted(self.over_one.items()):
            notes.append(
                f"{n} {cat} scores above 1 against a pass threshold below 1: scored 0-5? "
                f"give --pass-threshold {cat}=4.99 (DeepDistill's science rule)"
            )
        if notes:
            out["notes"] = notes
        return out


class _Grader:
    def __init__(self, config: GradeConfig, stats: RunStats, workdir: str) -> None:
        config.validate()
        self.config = config
        self.stats = stats
        self.workdir = workdir
        self.keys = _Keys(workdir, config.spill_after, config.partitions)
        self.leveller = Leveller(config.levels)
        self.summary = _Summary()
        self.sources: dict[str, int] = {}
        self.source_names: list[str] = []
        self.count = 0
        self.get_model = path_getter(config.model_field)
        self.get_score = path_getter(config.score_field)
        self.get_verify_score = path_getter("verify.score")
        self.get_category = path_getter(config.category_field)
        self.get_verdict = path_getter(config.verdict_field)
        self.get_finish = path_getter(config.finish_reason_field)
        self.thresholds: dict[str, float] = {}

    def _verified(self, records: Iterable[Record]) -> Iterator[Record]:
        cfg = self.config
        if cfg.verify is None:
            return iter(records)
        score_field = cfg.score_field

        def scored(rec: Record) -> bool:
            data = rec.data
            return isinstance(data.get("verify"), dict) or _number(get_path(data, score_field)) is not None

        vcfg = VerifyConfig(**{**cfg.verify.__dict__, "skip": scored})
        return verify_records(records, vcfg, self.stats)

    def _key(self, rec: Record, seq: int) -> Key | None:
        cfg = self.config
        data = rec.data
        try:
            rid = cfg.fields.record_id(rec)
        except BadInput as exc:
            self.stats.reject(rec, exc.message)
            return None
        model = self.get_model(data)
        if is_missing(model) or model is None or model == "":
            self.stats.reject(rec, f"no model field ({cfg.model_field}); name it with --model-field")
            return None
        score = _number(self.get_score(data))
        if score is None:
            score = _number(self.get_verify_score(data))
        if score is None:
            if cfg.verify is None and not isinstance(data.get("verify"), dict):
                self.stats.reject(rec, f"no score ({cfg.score_field}); run `still verify` first")
                return None
            self.summary.unscored += 1  # e.g. verdict error or timeout: scored 0, counted
            score = 0.0
        category = self.get_category(data)
        category = "*" if is_missing(category) or category is None else str(category)
        threshold = self.thresholds.get(category)
        if threshold is None:
            threshold = self.thresholds[category] = cfg.threshold(category)
        if score != 0.0 and score != 1.0:
            self.summary.nonbinary = True
            if score > 1.0 and threshold < 1.0:
                self.summary.over_one[category] = self.summary.over_one.get(category, 0) + 1
        truncated = self.get_verdict(data) == "truncated" or self.get_finish(data) == "length"
        passed = score > threshold  # truncated responses score 0 from verify; they are also counted
        return (seq, rid, str(model), score, passed, truncated)

    def spool(self, records: Iterable[Record], spool: IO[bytes], index: IO[bytes]) -> None:
        """Pass 1: records to the spool in input order, keys to memory or partitions."""
        seq = 0
        for rec in self._verified(records):
            key = self._key(rec, seq)
            if key is None:
                continue
            data = rec.data
            if "grade" in data or "difficulty" in data:  # a regrade replaces both
                rec.changed().pop("grade", None)
                data.pop("difficulty", None)
            src = self.sources.get(rec.source)
            if src is None:
                src = self.sources[rec.source] = len(self.source_names)
                self.source_names.append(rec.source)
            spool.write(rec.to_bytes())
            index.write(_SLOT.pack(0, 0, rec.line, src))
            self.keys.add(key)
            seq += 1
        self.count = seq

    def grade_groups(self, index_fd: int, results: IO[bytes]) -> None:
        """Pass 2: each query's grade once, to the results file; every record's slot points at it."""
        cfg = self.config
        offset = results.tell()
        for keys in self.keys.groups():
            by_id: dict[str, list[Key]] = {}
            for key in keys:
                by_id.setdefault(key[1], []).append(key)
            del keys
            for group in by_id.values():
                per_model: dict[str, list[Key]] = {}
                for key in group:
                    per_model.setdefault(key[2], []).append(key)
                grades = {
                    model: grade_model(
                        [k[3] for k in ks], sum(1 for k in ks if k[4]), sum(1 for k in ks if k[5]), cfg.cv_ddof
                    )
                    for model, ks in sorted(per_model.items())
                }
                level = self.leveller.level(grades)
                self.summary.add_query(grades, level)
                fragment = (
                    b',"grade":'
                    + orjson.dumps({m: g.as_dict() for m, g in grades.items()})
                    + b',"difficulty":'
                    + orjson.dumps(level)
                )
                results.write(fragment)
                slot = _RESULT.pack(offset, len(fragment))
                for key in group:
                    os.pwrite(index_fd, slot, key[0] * _SLOT.size)
                offset += len(fragment)

    def emit(self, spool: IO[bytes], index: IO[bytes], results: IO[bytes]) -> Iterator[Record]:
        """Pass 3: records in input order with their query's grade spliced in."""
        last_offset = -1
        fragment = b""
        loads = orjson.loads
        names = self.source_names
        readline = spool.readline
        results_fd = results.fileno()
        block = _SLOT.size * 4096
        while chunk := index.read(block):
            for offset, length, lineno, src in _SLOT.iter_unpack(chunk):
                line = readline()
                if offset != last_offset:
                    fragment = os.pread(results_fd, length, offset)
                    last_offset = offset
                raw = line.rstrip()[:-1] + fragment + b"}\n"
                yield Record(loads(raw), raw, names[src], lineno)


def grade_records(records: Iterable[Record], config: GradeConfig, stats: RunStats) -> Iterator[Record]:
    """Yield every usable record, in input order, with ``grade`` and ``difficulty`` of its query.

    Records without a score are verified in process (``config.verify``); unusable ones follow the
    ``--on-error`` policy through ``stats.reject``. A summary goes to ``stats.extra["grade"]``.
    """
    with tempfile.TemporaryDirectory(prefix="still-grade-") as workdir:
        grader = _Grader(config, stats, workdir)
        with contextlib.ExitStack() as files:
            spool = files.enter_context(open(os.path.join(workdir, "records"), "w+b", buffering=1 << 20))
            index = files.enter_context(open(os.path.join(workdir, "index"), "w+b", buffering=1 << 16))
            results = files.enter_context(open(os.path.join(workdir, "results"), "w+b", buffering=1 << 16))
            grader.spool(records, spool, index)
            spool.flush()
            index.flush()
            grader.grade_groups(index.fileno(), results)
            results.flush()
            spool.seek(0)
            index.seek(0)
            yield from grader.emit(spool, index, results)
        stats.extra["grade"] = grader.summary.as_dict(config, grader.leveller, grader.keys)
