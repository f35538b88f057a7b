"""Deterministic, order-independent, streaming selection of training records.

Every record gets two seeded hash priorities: ``qprio = H(seed, id)`` for its query and
``rprio = H(seed, id, model, sample_idx, response)`` for the response (xxh3-64). A selection of
"N records" keeps the N lowest keys ``(qprio, rprio)`` (exact ties: by raw bytes) of its stratum in a bounded
max-heap (bottom-k), so the kept set depends only on the set of input records and the seed, never
on their order or chunking. ``--per-query K`` caps how many responses of one query a stratum keeps
(the K lowest ``rprio``); since all responses of a query share ``qprio``, queries enter whole.

Query-level statistics (pass rate, CV, max score) come either from ``grade`` fields on each line
(order-free, no grouping) or from aggregating ``verify.score`` over *adjacent* lines with the same
id (what ``generate | verify`` emit): memory is one group, and such input may be shuffled within
and across groups but not interleaved. Two things are decided on the first line and hold for the
whole input: ``--query-stats auto`` picks grade fields when the first line has a ``grade`` object
(else adjacent groups), and without ``--model`` the model is the only one in the first graded
line's ``grade``; a later line graded for another model is reported (``--on-error``), not misread.

Quantile bands (``--length-top``) need the value distribution first: pass 1 builds an exact
histogram (memory O(distinct values)), pass 2 selects; ties at a band edge are broken by
``rprio`` with a heap no larger than the band.

Output order: records decided on sight (pure filters) are written at once in input order; records
held for a counted selection are written at the end, stratum by stratum in the order given, each in
ascending priority. Same input order => byte-identical output; any order => the same set.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from still.core.errors import BadInput, UsageError
from still.core.fields import Fields, get_path, is_missing
from still.core.jsonl import Record
from still.core.stats import RunStats

# DeepDistill §2.4.2: a response passes when verify_score exceeds its category's threshold. The
# paper scores science 0-5 (pass > 4.99); `verify` scores everything in [0, 1], so science uses
# 4.99 / 5 = 0.998 here (give --pass-threshold science=4.99 for raw AM-40M science scores).
DEEPDISTILL_PASS_THRESHOLDS: dict[str, float] = {
    "math": 0.99,
    "code": 0.99,
    "if": 0.99,
    "science": 0.998,
    "other": 0.7,
    "multiturn": 0.7,
    "*": 0.99,
}
# Algorithm 1 keeps "easy" queries of these categories with probability 0.5.
EASY_KEPT_CATEGORIES = ("other", "multiturn")
PRESETS = ("deepdistill-stage1", "deepdistill-stage2", "openthoughts")
_INF = float("inf")
# How many recently finished queries `--query-stats adjacent` remembers to catch interleaved input
# (~100 bytes each): round-robin output over up to this many queries is reported, not misread.
RECENT_GROUPS_CHECKED = 65536
_H = xxhash.xxh3_64_intdigest


def parse_band(text: str) -> tuple[float, float]:
    """``LO..HI`` with 0 <= LO <= HI (an open side may be left empty: ``0.5..``)."""
    m = re.fullmatch(r"\s*([0-9.eE+-]*)\s*\.\.\s*([0-9.eE+-]*)\s*", text)
    if not m:
        raise UsageError(f"expected a band LO..HI (e.g. 0.2..0.8), not {text!r}")
    try:
        lo = float(m.group(1)) if m.group(1) else 0.0
        hi = float(m.group(2)) if m.group(2) else _INF
    except ValueError:
        raise UsageError(f"expected a band LO..HI (e.g. 0.2..0.8), not {text!r}") from None
    if lo > hi:
        raise UsageError(f"band {text!r}: LO must not exceed HI")
    return lo, hi


def parse_mapping(text: str, option: str, value_type: Callable[[str], Any] = float) -> dict[str, Any]:
    """``a=1,b=2`` (or a bare number, meaning ``*=number``) into an ordered dict."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.rpartition("=")
        if not sep:
            key, value = "*", part
        try:
            out[key.strip()] = value_type(value)
        except ValueError:
            raise UsageError(f"{option}: cannot read {part!r} (expected KEY=NUMBER,...)") from None
    if not out:
        raise UsageError(f"{option}: empty")
    return out


def parse_quota(text: str) -> tuple[str, dict[str, int]]:
    """``FIELD=value:count,value:count`` into the field and its ordered targets."""
    fld, sep, rest = text.partition("=")
    if not sep or not fld.strip():
        raise UsageError(f"--quota must look like FIELD=value:count,... not {text!r}")
    targets: dict[str, int] = {}
    for part in rest.split(","):
        value, sep, count = part.strip().rpartition(":")
        if not sep or not value:
            raise UsageError(f"--quota: {part!r} must be value:count")
        try:
            n = int(count)
        except ValueError:
            raise UsageError(f"--quota: count in {part!r} is not an integer") from None
        if n < 0:
            raise UsageError(f"--quota: negative count in {part!r}")
        targets[value] = n
    return fld.strip(), targets


def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by ``weights`` exactly (largest remainder; ties in the order given)."""
    wsum = sum(weights.values())
    if wsum <= 0 or any(w < 0 for w in weights.values()):
        raise UsageError("weights must be non-negative and not all zero")
    exact = {k: total * w / wsum for k, w in weights.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    rest = total - sum(counts.values())
    order = sorted(weights, key=lambda k: -(exact[k] - counts[k]))
    for k in order[:rest]:
        counts[k] += 1
    return counts


def value_key(value: Any) -> str:
    """A stratum label for any JSON value (strings as they are, others as JSON)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def coefficient_of_variation(scores: list[float], ddof: int) -> float | None:
    """sigma/mu of one query's scores (DeepDistill Eq. 6); None when mu == 0 or n <= ddof."""
    n = len(scores)
    if n <= ddof:
        return None
    mu = sum(scores) / n
    if mu == 0:
        return None
    var = sum((s - mu) ** 2 for s in scores) / (n - ddof)
    return math.sqrt(var) / mu


class QueryStats:
    """What a query-level rule needs: pass rate, CV and whether any response passed."""

    __slots__ = ("pass_rate", "cv", "any_pass")

    def __init__(self, pass_rate: float | None, cv: float | None, any_pass: bool | None) -> None:
        self.pass_rate = pass_rate
        self.cv = cv
        self.any_pass = any_pass


@dataclass(frozen=True)
class SampleConfig:
    """Every selection ``still sample`` can combine (see the module doc for guarantees)."""

    fields: Fields = field(default_factory=Fields)
    seed: int = 0
    total: int | None = None
    per_query: int | None = None
    quota_field: str | None = None
    quota: dict[str, int] = field(default_factory=dict)
    level_field: str = "difficulty"
    level_weights: dict[str, float] = field(default_factory=dict)
    category_field: str = "domain"
    model: str | None = None
    pass_rate_field: str | None = None
    cv_field: str | None = None
    score_field: str = "verify.score"
    pass_rate_band: tuple[float, float] | None = None
    cv_min: dict[str, float] = field(default_factory=dict)
    pass_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEEPDISTILL_PASS_THRESHOLDS))
    cv_ddof: int = 1
    query_stats: str = "auto"  # auto | grade | adjacent
    band: tuple[float, float] | None = None  # quantile band of band_value
    band_value: str = "tokens"  # tokens | chars | level | a dotted field path
    length_field: str = "n_tokens"
    preset: str | None = None
    cv_threshold: dict[str, float] = field(default_factory=dict)
    easy_keep_prob: float = 0.5
    passing_only: bool = False  # keep only responses whose score passes their category's threshold
    # False: records released from a counted selection at the end carry an empty ``data`` (their
    # bytes are exact), for a consumer that only writes them
    parse_selected: bool = True

    def validate(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)}")
        if self.preset in ("deepdistill-stage1", "deepdistill-stage2") and not self.cv_threshold:
            raise UsageError(
                f"--preset {self.preset} needs --cv-threshold CATEGORY=CVt,... (DeepDistill gives no values; "
                "its footnote only says each category has its own)"
            )
        if self.preset == "openthoughts" and self.band is None:
            raise UsageError("--preset openthoughts needs --length-top FRACTION or --difficulty-top FRACTION")
        if self.quota and self.total is not None:
            raise UsageError("--quota already fixes the total; drop -n (or use --difficulty-weights with -n)")
        if self.level_weights and self.total is None and not self.quota:
            raise UsageError("--difficulty-weights needs -n TOTAL (or --quota) to know how many to draw")
        if self.per_query is not None and self.per_query < 1:
            raise UsageError("--per-query must be at least 1")
        if self.total is not None and self.total < 0:
            raise UsageError("-n must not be negative")
        if self.cv_ddof not in (0, 1):
            raise UsageError("--cv-ddof must be 0 or 1")
        if self.query_stats not in ("auto", "grade", "adjacent"):
            raise UsageError("--query-stats must be auto, grade or adjacent")
        if self.band is not None and not (0.0 <= self.band[0] <= self.band[1] <= 1.0):
            raise UsageError("quantile bands must lie within 0..1")

    @property
    def selects(self) -> bool:
        """Whether any option selects or drops records (else every record passes through)."""
        return any(
            (
                self.total is not None,
                self.per_query is not None,
                self.quota,
                self.level_weights,
                self.pass_rate_band is not None,
                self.cv_min,
                self.band is not None,
                self.preset,
                self.passing_only,
            )
        )

    @property
    def groups_by_query(self) -> str | None:
        """The option that groups records by query id, if any."""
        if self.effective_per_query is not None:
            return "--per-query" if self.per_query is not None else f"--preset {self.preset}"
        if self.needs_query_stats:
            return "the query statistics (pass rate, CV)"
        return None

    @property
    def needs_query_stats(self) -> bool:
        return self.preset in ("deepdistill-stage1", "deepdistill-stage2") or bool(
            self.pass_rate_band is not None or self.cv_min
        )

    @property
    def effective_per_query(self) -> int | None:
        if self.per_query is not None:
            return self.per_query
        if self.preset == "deepdistill-stage2":
            return 1
        if self.preset == "openthoughts":
            return 16
        return None

    def targets(self) -> dict[tuple[str, ...], float] | None:
        """Stratum -> target count (inf: unbounded), or None for pure streaming filters."""
        if self.quota:
            if self.level_weights:
                out: dict[tuple[str, ...], float] = {}
                for qv, count in self.quota.items():
                    for lv, c in apportion(count, self.level_weights).items():
                        out[(qv, lv)] = c
                return out
            return {(qv,): float(c) for qv, c in self.quota.items()}
        if self.level_weights:
            assert self.total is not None
            return {(lv,): float(c) for lv, c in apportion(self.total, self.level_weights).items()}
        if self.total is not None:
            return {(): float(self.total)}
        if self.effective_per_query is not None or self.preset == "deepdistill-stage2":
            return {(): _INF}
        return None


class _Stratum:
    """Bottom-k of one stratum with an optional per-query cap (all keys: lower is better).

    Entries are ``[negkey, raw, qkey, alive, labels]`` in a min-heap, i.e. a max-heap on the key, so
    ``heap[0]`` is the worst kept record. Equal keys (the same id, model, sample_idx and
    response) are ordered by their raw bytes, so even exact ties never depend on input order.
    The key is one int ``qprio << 64 | rprio`` (the same order as the pair, cheaper to compare),
    or a tuple led by the CV for DeepDistill stage 2.
    """

    __slots__ = ("label", "target", "cap", "heap", "per_query", "alive", "dead", "evict_reason", "labels")

    def __init__(
        self,
        label: str,
        target: float,
        cap: int | None,
        evict_reason: str,
        labels: Callable[[dict[str, Any]], tuple[str, str]],
    ) -> None:
        self.label = label
        # the summary's (category, level) of a kept record, taken when it enters so that the
        # selection is counted at the end without parsing its bytes again
        self.labels = labels
        self.target = target
        self.cap = cap
        self.heap: list[list[Any]] = []
        self.per_query: dict[Any, list[tuple[Any, ...]]] = {}
        self.alive = 0
        self.dead = 0
        self.evict_reason = evict_reason

    def worst(self) -> list[Any] | None:
        heap = self.heap
        while heap and not heap[0][3]:
            heapq.heappop(heap)
            self.dead -= 1
        return heap[0] if heap else None

    def rejects_prefix(self, neg_prefix: tuple[Any, ...]) -> bool:
        """True when every key starting with this (negated) prefix is worse than the worst kept."""
        if self.alive < self.target:
            return False
        worst = self.worst()
        return worst is not None and neg_prefix < worst[0][: len(neg_prefix)]

    def query_behind(self, qprio: int) -> bool:
        """:meth:`rejects_prefix` for plain keys: the stratum is full and its worst kept query
        ranks before this one, so no response of this query can enter."""
        if self.alive < self.target or not self.heap:
            return False
        worst = self.heap[0]
        return bool(worst[3]) and qprio > (-worst[0]) >> 64

    def offer(self, neg: Any, qkey: Any, raw: bytes, data: dict[str, Any], stats: RunStats) -> None:
        if self.target == 0:
            stats.drop(self.evict_reason)
            return
        full = self.alive >= self.target
        if full:
            heap = self.heap
            worst = heap[0] if heap and heap[0][3] else self.worst()
            # (neg, raw) <= (worst key, worst raw): the key is no better than the worst kept
            if worst is not None and (neg < worst[0] or (neg == worst[0] and raw <= worst[1])):
                stats.dropped[self.evict_reason] += 1
                return
        replaced = False
        if self.cap is not None:
            group = self.per_query.get(qkey)
            if group is None:
                entry = [neg, raw, qkey, True, self.labels(data)]
                self.per_query[qkey] = [(neg, raw, entry)]
            elif len(group) >= self.cap:
                # group holds (negkey, raw, entry): [0] is the query's worst kept response
                g0 = group[0]
                if neg < g0[0] or (neg == g0[0] and raw <= g0[1]):
                    stats.dropped["per-query limit"] += 1
                    return
                entry = [neg, raw, qkey, True, self.labels(data)]
                old = heapq.heapreplace(group, (neg, raw, entry))[2]
                old[3] = False
                self.alive -= 1
                self.dead += 1
                replaced = True
                stats.drop("per-query limit")
            else:
                entry = [neg, raw, qkey, True, self.labels(data)]
                heapq.heappush(group, (neg, raw, entry))
        else:
            entry = [neg, raw, qkey, True, self.labels(data)]
        if full and not replaced:
            # the stratum stays full: the new entry takes the worst one's place (one sift, not two);
            # worst() above left a live entry on top, and the new key is better than it
            evicted = heapq.heapreplace(self.heap, entry)
            stats.drop(self.evict_reason)
            if self.cap is not None:
                group = self.per_query[evicted[2]]
                # the stratum's worst entry is also the worst of its own query (keys share the
                # query prefix), so it sits at group[0] (or an exact duplicate of it does)
                if group[0][2] is not evicted:
                    i = next(i for i, t in enumerate(group) if t[2] is evicted)
                    group[0], group[i] = group[i], group[0]
                heapq.heappop(group)
                if not group:
                    del self.per_query[evicted[2]]
        else:
            heapq.heappush(self.heap, entry)
            self.alive += 1
        if self.dead > 1024 and self.dead > self.alive:
            self.heap = [e for e in self.heap if e[3]]
            heapq.heapify(self.heap)
            self.dead = 0

    def selected(self) -> list[tuple[bytes, tuple[str, str]]]:
        """(raw, labels) of the kept records in ascending key order."""
        live = [e for e in self.heap if e[3]]
        live.sort(reverse=True)  # ascending key = descending (negkey, raw)
        return [(e[1], e[4]) for e in live]


class _Prepared:
    """Per-record values computed once."""

    __slots__ = ("rec", "rid", "qprio", "qs")

    def __init__(self, rec: Record, rid: str, qprio: int, qs: QueryStats | None) -> None:
        self.rec = rec
        self.rid = rid
        self.qprio = qprio
        self.qs = qs


class Sampler:
    """The selection engine: feed records with :meth:`offer`, then collect :meth:`finish`."""

    def __init__(self, config: SampleConfig, stats: RunStats) -> None:
        config.validate()
        self.config = config
        self.stats = stats
        self.seed_text = str(config.seed)
        self.seed_prefix = f"{config.seed}\x1f".encode()
        self._plain_response = config.fields.response_path is None
        self.cap = config.effective_per_query
        targets = config.targets()
        self.strata: dict[tuple[str, ...], _Stratum] | None = None
        if targets is not None:
            reason = "quota full" if config.quota else "not selected"
            self.strata = {}
            for key, target in targets.items():
                self.strata[key] = _Stratum("/".join(key) or "all", target, self.cap, reason, self.out_labels)
        self.thresholds = dict(config.pass_thresholds)
        if config.preset == "deepdistill-stage2" and "*" not in config.cv_threshold:
            # Stage II: one uniform pass threshold of 0.99
            self.thresholds = {"*": 0.99}
        self.band_cut: _BandCut | None = None
        self.reject: Callable[[Record, str], None] = stats.reject
        self.groups_scored = 0
        self.nonbinary_scores = False
        self.stage2 = config.preset == "deepdistill-stage2"
        self.model: str | None = config.model
        self._paths: tuple[str, str] | None = None
        self._get_pr = path_getter(config.pass_rate_field or "grade")
        self._get_cv = path_getter(config.cv_field or "grade")
        self._get_category = path_getter(config.category_field)
        self._get_level = path_getter(config.level_field)
        self._get_quota = path_getter(config.quota_field) if config.quota_field else None
        self._get_score = path_getter(config.score_field)
        # 2: required, 1: used when present, 0: not needed
        self._need_pr = 2 if (config.pass_rate_band is not None or config.preset is not None) else 0
        self._need_cv = bool(config.cv_min) or config.preset in ("deepdistill-stage1", "deepdistill-stage2")
        self._by_value: dict[str, _Stratum] | None = None
        self._only = self.strata.get(()) if self.strata is not None and len(self.strata) == 1 else None
        if self.strata is not None and self._get_quota is not None and not config.level_weights:
            self._by_value = {key[0]: stratum for key, stratum in self.strata.items()}
        self.out_counts: Counter[str] = Counter()
        self.level_counts: Counter[str] = Counter()

    # ---- hashing -------------------------------------------------------------------------------
    def qprio(self, rid: str) -> int:
        return _H(self.seed_prefix + rid.encode())

    def rprio(self, rec: Record, rid: str) -> int:
        data = rec.data
        response = data.get("response") if self._plain_response else None
        if type(response) is not str:
            try:
                response = self.config.fields.response(rec)
            except BadInput:
                response = ""
        # H(seed, id, model, sample_idx, response) joined by \x1f; an f-string formats like str()
        # and joins in one copy
        text = f"{self.seed_text}\x1f{rid}\x1f{data.get('model', '')}\x1f{data.get('sample_idx', '')}\x1f{response}"
        return _H(text.encode("utf-8", "surrogatepass"))

    # ---- per-record fields ---------------------------------------------------------------------
    def category(self, rec: Record) -> str:
        value = self._get_category(rec.data)
        return "" if is_missing(value) or value is None else value_key(value)

    def threshold(self, category: str) -> float:
        t = self.thresholds.get(category, self.thresholds.get("*"))
        if t is None:
            raise UsageError(f"no pass threshold for category {category!r} (add it, or '*=', to --pass-threshold)")
        return t

    def score(self, rec: Record) -> float:
        value = self._get_score(rec.data)
        if is_missing(value) or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(rec.source, rec.line, f"no numeric {self.config.score_field} (needed for pass rate / CV)")
        return float(value)

    def _grade_paths(self, rec: Record) -> tuple[str, str]:
        """The pass-rate and CV paths, resolving the model from the first graded record."""
        if self._paths is not None:
            return self._paths
        cfg = self.config
        needs_model = (self._need_pr and cfg.pass_rate_field is None) or (self._need_cv and cfg.cv_field is None)
        if needs_model and self.model is None:
            grade = rec.data.get("grade")
            if isinstance(grade, dict) and len(grade) == 1:
                self.model = next(iter(grade))
            elif isinstance(grade, dict) and grade:
                raise UsageError(f"{rec.where}: grade has several models ({', '.join(grade)}); choose one with --model")
            else:
                raise BadInput(rec.source, rec.line, "no grade field (run `still grade`, or give --pass-rate-field)")
        self._paths = (
            cfg.pass_rate_field or f"grade.{self.model}.pass_rate",
            cfg.cv_field or f"grade.{self.model}.cv",
        )
        self._get_pr = path_getter(self._paths[0])
        self._get_cv = path_getter(self._paths[1])
        return self._paths

    def grade_stats(self, rec: Record) -> QueryStats:
        pass_rate, cv = self.grade_values(rec)
        return QueryStats(pass_rate, cv, None if pass_rate is None else pass_rate > 0)

    def grade_values(self, rec: Record) -> tuple[float | None, float | None]:
        """The (pass rate, CV) a line's grade fields give: the one parser of query stats on lines."""
        pr_path, cv_path = self._paths or self._grade_paths(rec)
        data = rec.data
        pass_rate: float | None = None
        cv: float | None = None
        if self._need_pr:
            value = self._get_pr(data)
            if type(value) is float or type(value) is int:
                pass_rate = float(value)
            elif self._need_pr == 2 or not (is_missing(value) or value is None):
                raise BadInput(rec.source, rec.line, self._model_hint(data, _not_number(pr_path, value)))
        if self._need_cv:
            value = self._get_cv(data)
            if type(value) is float or type(value) is int:
                cv = float(value)
            elif value is not None:
                # null is a valid CV: undefined when the mean score is 0
                raise BadInput(rec.source, rec.line, self._model_hint(data, _not_number(cv_path, value)))
        return pass_rate, cv

    def _model_hint(self, data: dict[str, Any], message: str) -> str:
        """``message``, saying so when the line is graded for other models than the one taken
        from the first graded line."""
        grade = data.get("grade")
        if self.config.model is None and self.model is not None and isinstance(grade, dict) and grade:
            if self.model not in grade:
                others = ", ".join(map(str, grade))
                return (
                    f"{message} (graded for {others}; the model {self.model} came from the first graded line: "
                    "choose one with --model)"
                )
        return message

    def group_stats(self, group: list[Record]) -> QueryStats:
        scores = [self.score(r) for r in group]
        self.groups_scored += 1
        if not self.nonbinary_scores and any(sc != 0.0 and sc != 1.0 for sc in scores):
            self.nonbinary_scores = True
        thr = self.threshold(self.category(group[0]))
        passed = sum(1 for s in scores if s > thr)
        return QueryStats(passed / len(scores), coefficient_of_variation(scores, self.config.cv_ddof), passed > 0)

    # ---- filters -------------------------------------------------------------------------------
    def with_query_stats(self, records: Iterable[Record]) -> Iterator[_Prepared]:
        """Attach query stats (grade fields, or adjacent verify.score groups) and priorities."""
        fields = self.config.fields
        get_id = path_getter(fields.id_path)
        if not self.config.needs_query_stats:
            for rec in records:
                rid = get_id(rec.data)
                if type(rid) is not str:
                    try:
                        rid = fields.record_id(rec)
                    except BadInput as exc:
                        self._unusable(rec, exc)
                        continue
                yield _Prepared(rec, rid, self.qprio(rid), None)
            return
        mode = self.config.query_stats
        group: list[Record] = []
        group_id = ""
        closed: dict[str, str] = {}  # recently finished queries -> where they started (FIFO)
        for rec in records:
            if mode == "auto":
                has_grade = (
                    self.config.pass_rate_field is not None
                    or self.config.cv_field is not None
                    or isinstance(rec.data.get("grade"), dict)
                )
                mode = "grade" if has_grade else "adjacent"
            rid = get_id(rec.data)
            try:
                if type(rid) is not str:
                    rid = fields.record_id(rec)
                if mode == "grade":
                    qs = self.grade_stats(rec)
                else:
                    self.score(rec)  # validated before it joins its group
            except BadInput as exc:
                self._unusable(rec, exc)
                continue
            if mode == "grade":
                yield _Prepared(rec, rid, self.qprio(rid), qs)
                continue
            if group and rid != group_id:
                yield from self._flush_group(group, group_id)
                closed[group_id] = group[0].where
                if len(closed) > RECENT_GROUPS_CHECKED:
                    del closed[next(iter(closed))]
                group = []
                if rid in closed:
                    raise BadInput(
                        rec.source,
                        rec.line,
                        f"query {rid!r} continues after other queries (its lines started at {closed[rid]}); "
                        "--query-stats adjacent needs each query's lines together: sort by id or run `still grade`",
                    )
            group_id = rid
            group.append(rec)
        if group:
            yield from self._flush_group(group, group_id)

    def fast_path_applies(self) -> bool:
        """The common selections :meth:`select_all` handles: no preset, no quantile band."""
        return self.config.preset is None and self.config.band is None and not self.config.passing_only

    def uses_grade_fields(self, first: Record) -> bool:
        """``--query-stats auto`` decides on the first line: grade fields when it has them."""
        cfg = self.config
        return cfg.pass_rate_field is not None or cfg.cv_field is not None or isinstance(first.data.get("grade"), dict)

    def select_all(self, records: Iterable[Record]) -> Iterator[Record]:
        """:meth:`with_query_stats` (grade fields or none), :meth:`offer` and :meth:`select` in one
        loop without per-record objects, for :meth:`fast_path_applies` selections: the same
        parser, checks and keys, so the same decisions, drop reasons and output."""
        cfg = self.config
        stats = self.stats
        # drop reasons are collected in a list (an append is cheaper than a Counter update) and
        # counted in batches
        reasons: list[str] = []
        drop = reasons.append
        fields = cfg.fields
        get_id = path_getter(fields.id_path)
        # a plain top-level id: dict.get inline (a missing id is no str and takes record_id)
        id_key = fields.id_path if "." not in fields.id_path else None
        need_qs = cfg.needs_query_stats
        grade_values, admits_query = self.grade_values, self.admits_query
        stratum_of, rprio = self.stratum_of, self.rprio
        seed_prefix = self.seed_prefix
        strata = self.strata
        try:
            for rec in records:
                if len(reasons) >= 65536:
                    stats.dropped.update(reasons)
                    reasons.clear()
                data = rec.data
                rid = data.get(id_key) if id_key is not None else get_id(data)
                try:
                    if type(rid) is not str:
                        rid = fields.record_id(rec)
                    if need_qs:
                        pass_rate, cv = grade_values(rec)
                except BadInput as exc:
                    self._unusable(rec, exc)
                    continue
                if need_qs and not admits_query(rec, pass_rate, cv, drop):
                    continue
                if strata is None:
                    self.count_out(rec)
                    yield rec
                    continue
                stratum = stratum_of(rec)
                if stratum is None:
                    drop("not in quota")
                    continue
                qprio = _H(seed_prefix + rid.encode())
                if stratum.query_behind(qprio):
                    drop(stratum.evict_reason)
                    continue
                stratum.offer(-((qprio << 64) | rprio(rec, rid)), qprio, rec.to_bytes(), data, stats)
        finally:
            stats.dropped.update(reasons)

    def _flush_group(self, group: list[Record], rid: str) -> Iterator[_Prepared]:
        qs = self.group_stats(group)
        qprio = self.qprio(rid)
        for rec in group:
            yield _Prepared(rec, rid, qprio, qs)

    def admits_query(self, rec: Record, pass_rate: float | None, cv: float | None, drop: Callable[[str], None]) -> bool:
        """The query-level bands: pass rate within its band, CV at least its minimum."""
        cfg = self.config
        band = cfg.pass_rate_band
        if band is not None and (pass_rate is None or not band[0] <= pass_rate <= band[1]):
            drop("pass rate out of band")
            return False
        if cfg.cv_min:
            need = cfg.cv_min.get(self.category(rec), cfg.cv_min.get("*"))
            if need is not None and (cv is None or cv < need):
                drop("below cv")
                return False
        return True

    def keep(self, p: _Prepared, drop: Callable[[str], None]) -> bool:
        """Record-level rules (pass-rate band, CV minimum, presets); drops with a reason."""
        cfg = self.config
        qs = p.qs
        if qs is None:
            return True
        if not self.admits_query(p.rec, qs.pass_rate, qs.cv, drop):
            return False
        if cfg.preset in ("deepdistill-stage1", "deepdistill-stage2"):
            if not qs.any_pass:
                drop("no passing response")
                return False
            cat = self.category(p.rec)
            cvt = cfg.cv_threshold.get(cat, cfg.cv_threshold.get("*"))
            if cvt is None:
                raise UsageError(f"{p.rec.where}: no --cv-threshold for category {cat!r} (or give '*=')")
            challenging = qs.cv is not None and qs.cv > cvt
            if cfg.preset == "deepdistill-stage2":
                if not challenging:
                    drop("below cv")
                    return False
                return True
            if challenging:
                if self.score(p.rec) > self.threshold(cat):
                    return True
                drop("failing response of challenging query")
                return False
            if cat in EASY_KEPT_CATEGORIES:
                coin = _H(self.seed_prefix + b"easy\x1f" + p.rid.encode()) / 2.0**64
                if coin < cfg.easy_keep_prob:
                    return True
            drop("easy query")
            return False
        return True

    # ---- band values ---------------------------------------------------------------------------
    def band_value(self, rec: Record) -> float:
        cfg = self.config
        how = cfg.band_value
        if how == "chars":
            return float(len(cfg.fields.response(rec)))
        path = cfg.length_field if how == "tokens" else cfg.level_field if how == "level" else how
        value = get_path(rec.data, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if how == "tokens" and (is_missing(value) or value is None):
                raise BadInput(rec.source, rec.line, f"no {path} (use --length-unit chars to count characters)")
            raise BadInput(rec.source, rec.line, f"{path} is not a number: {value!r}")
        return float(value)

    def first_pass(self, records: Iterable[Record]) -> None:
        """Pass 1 for a quantile band: the exact histogram of values among kept records."""
        assert self.config.band is not None
        hist: Counter[float] = Counter()
        self.reject = _ignore_reject  # pass 2 counts unusable lines once, under --on-error
        try:
            for p in self.with_query_stats(records):
                try:
                    if self.keep(p, _ignore):
                        hist[self.band_value(p.rec)] += 1
                except BadInput as exc:
                    self._unusable(p.rec, exc)
        finally:
            self.reject = self.stats.reject
        self.band_cut = _BandCut.from_histogram(hist, self.config.band)

    def _unusable(self, rec: Record, exc: BadInput) -> None:
        """A well-formed line this selection cannot use: --on-error decides (fail re-raises)."""
        if exc.source != rec.source or exc.line != rec.line:
            raise exc
        self.reject(rec, exc.message)

    # ---- selection -----------------------------------------------------------------------------
    def stratum_of(self, rec: Record) -> _Stratum | None:
        """The stratum a record competes in (None: in no stratum)."""
        if self._only is not None:
            return self._only
        assert self.strata is not None
        cfg = self.config
        if self._by_value is not None:
            v = self._get_quota(rec.data)  # type: ignore[misc]
            if type(v) is str:  # a quota on one field: its string values lead straight to their stratum
                return self._by_value.get(v)
        key: tuple[str, ...] = ()
        if cfg.quota_field:
            v = self._get_quota(rec.data)  # type: ignore[misc]
            if is_missing(v) or v is None:
                return None
            key += (value_key(v),)
        if cfg.level_weights:
            v = self._get_level(rec.data)
            if is_missing(v) or v is None:
                return None
            key += (value_key(v),)
        return self.strata.get(key)

    def key_prefix(self, p: _Prepared) -> tuple[Any, ...]:
        """The query-level part of the negated key: every response of a query shares it."""
        if self.config.preset == "deepdistill-stage2":
            cv = p.qs.cv if p.qs is not None and p.qs.cv is not None else 0.0
            return (cv, -p.qprio)  # highest CV first, then query priority
        return (-p.qprio,)

    def offer(self, p: _Prepared) -> Record | None:
        """Decide one record; returns it when it is selected on sight (streaming mode)."""
        stats = self.stats
        if self.config.passing_only:
            try:
                score = self.score(p.rec)
            except BadInput as exc:
                self._unusable(p.rec, exc)
                return None
            if not score > self.threshold(self.category(p.rec)):
                stats.drop("failing response")
                return None
        if p.qs is not None and not self.keep(p, stats.drop):
            return None
        if self.band_cut is not None:
            verdict = self.band_cut.admit(self.band_value(p.rec), self.rprio(p.rec, p.rid), p, stats)
            if verdict is not True:
                return None  # dropped, or held as a band-edge tie until the end
        return self.select(p)

    def select(self, p: _Prepared) -> Record | None:
        if self.strata is None:
            self.count_out(p.rec)
            return p.rec
        stratum = self.stratum_of(p.rec)
        if stratum is None:
            self.stats.drop("not in quota")
            return None
        if self.stage2:
            prefix = self.key_prefix(p)
            if stratum.rejects_prefix(prefix):
                self.stats.drop(stratum.evict_reason)
                return None
            neg: Any = (*prefix, -self.rprio(p.rec, p.rid))
        else:
            if stratum.query_behind(p.qprio):
                self.stats.drop(stratum.evict_reason)
                return None
            neg = -((p.qprio << 64) | self.rprio(p.rec, p.rid))
        stratum.offer(neg, p.qprio, p.rec.to_bytes(), p.rec.data, self.stats)
        return None

    def out_labels(self, data: dict[str, Any]) -> tuple[str, str]:
        """A selected record's category and level as the summary's distribution counts them."""
        cat = self._get_category(data)
        lv = self._get_level(data)
        if type(cat) is str and type(lv) is str:
            return cat or "(none)", lv
        return (
            ("" if is_missing(cat) or cat is None else value_key(cat)) or "(none)",
            "(none)" if is_missing(lv) or lv is None else value_key(lv),
        )

    def count_out(self, rec: Record) -> None:
        self.count_labels(self.out_labels(rec.data))

    def count_labels(self, labels: tuple[str, str]) -> None:
        self.out_counts[labels[0]] += 1
        self.level_counts[labels[1]] += 1

    def finish(self) -> Iterator[Record]:
        """Release band-edge ties into the selection, then the held strata, then the summary."""
        if self.band_cut is not None:
            for p in self.band_cut.release(self.stats):
                rec = self.select(p)
                if rec is not None:
                    yield rec
        summary: dict[str, Any] = {}
        if self.strata is not None:
            strata_out = []
            for key, stratum in self.strata.items():
                chosen = stratum.selected()
                target = stratum.target
                strata_out.append(
                    {
                        "stratum": dict(zip(self._stratum_fields(), key, strict=True)),
                        "target": None if target == _INF else int(target),
                        "selected": len(chosen),
                        "shortfall": 0 if target == _INF else int(target) - len(chosen),
                    }
                )
                for n, (raw, labels) in enumerate(chosen, 1):
                    self.count_labels(labels)
                    yield Record(orjson.loads(raw) if self.config.parse_selected else {}, raw, "<selected>", n)
            summary["strata"] = strata_out
            summary["shortfall"] = sum(s["shortfall"] for s in strata_out)
        summary["distribution"] = {
            self.config.category_field: dict(sorted(self.out_counts.items())),
            self.config.level_field: dict(sorted(self.level_counts.items())),
        }
        if self.band_cut is not None:
            summary["band"] = self.band_cut.describe()
        if self._need_cv and self.groups_scored and not self.nonbinary_scores:
            summary["note"] = (
                "every score was 0 or 1: CV is then a function of the pass rate (sqrt((1-p)/p) with ddof 0) "
                "and selects nothing a --pass-rate band would not"
            )
        summary["seed"] = self.config.seed
        if self.config.preset:
            summary["preset"] = self.config.preset
        self.stats.extra["sample"] = summary

    def _stratum_fields(self) -> list[str]:
        names = []
        if self.config.quota_field:
            names.append(self.config.quota_field)
        if self.config.level_weights:
            names.append(self.config.level_field)
        return names


def path_getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """A fast reader for one dotted path: plain dict walks inline, anything else (list
    indices) through :func:`get_path`."""
    missing = _missing()
    if "." not in path:
        return lambda data: data.get(path, missing)
    parts = tuple(path.split("."))

    def get(data: dict[str, Any]) -> Any:
        cur: Any = data
        for part in parts:
            if type(cur) is not dict:
                return get_path(data, path)
            cur = cur.get(part, missing)
            if cur is missing:
                return missing
        return cur

    # two or three plain dict levels (verify.score, grade.M.pass_rate): index directly; anything
    # else on the way (a missing key, a list, a scalar) takes the general walk above
    if len(parts) == 2:
        a, b = parts

        def get2(data: dict[str, Any]) -> Any:
            try:
                return data[a][b]
            except (KeyError, TypeError):
                return get(data)

        return get2
    if len(parts) == 3:
        a, b, c = parts

        def get3(data: dict[str, Any]) -> Any:
            try:
                return data[a][b][c]
            except (KeyError, TypeError):
                return get(data)

        return get3
    return get


def _missing() -> Any:
    return get_path({}, "x")


def _not_number(path: str, value: Any) -> str:
    return f"no {path}" if is_missing(value) or value is None else f"{path} is not a number: {value!r}"


def _ignore_reject(rec: Record, message: str) -> None:
    return None


def _ignore(reason: str) -> None:
    return None


class _BandCut:
    """Exact quantile band on a value: keep ranks [start, end) of (value, rprio) ascending."""

    def __init__(self, n: int, start: int, end: int, below: dict[float, int], counts: dict[float, int]) -> None:
        self.n, self.start, self.end = n, start, end
        kept_values = [v for v in sorted(counts) if below[v] < end and below[v] + counts[v] > start]
        self.lo_value = kept_values[0] if kept_values else _INF
        self.hi_value = kept_values[-1] if kept_values else -_INF
        # per edge value: keep positions [s, e) of its ties in ascending (rprio, H(line)) order.
        # "low" keeps the e smallest in a heap and skips s at the end; "high" keeps the
        # counts - s largest and cuts the tail: whichever heap is smaller.
        self.edges: dict[float, tuple[int, int, bool, int]] = {}  # value -> (s, e, low, heap size)
        for v in {self.lo_value, self.hi_value} - {_INF, -_INF}:
            s = max(start - below[v], 0)
            e = min(end - below[v], counts[v])
            if (s, e) != (0, counts[v]):
                low = e <= counts[v] - s
                self.edges[v] = (s, e, low, e if low else counts[v] - s)
        self.held: dict[float, list[tuple[int, int, int, _Prepared]]] = {v: [] for v in self.edges}
        self._seq = 0

    @classmethod
    def from_histogram(cls, hist: Counter[float], band: tuple[float, float]) -> _BandCut:
        n = sum(hist.values())
        below: dict[float, int] = {}
        acc = 0
        for v in sorted(hist):
            below[v] = acc
            acc += hist[v]
        start = int(round(band[0] * n))
        end = int(round(band[1] * n))
        return cls(n, start, end, below, dict(hist))

    def admit(self, value: float, rprio: int, p: _Prepared, stats: RunStats) -> bool | None:
        if value < self.lo_value or value > self.hi_value:
            stats.drop("outside band")
            return False
        edge = self.edges.get(value)
        if edge is None:
            return True
        _, _, low, size = edge
        heap = self.held[value]
        tie = _H(p.rec.to_bytes())
        self._seq += 1
        # low: a max-heap on (rprio, tie) keeps the smallest; high: a min-heap keeps the largest
        item = (-rprio, -tie, self._seq, p) if low else (rprio, tie, self._seq, p)
        if len(heap) < size:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)
            stats.drop("outside band")
        else:
            stats.drop("outside band")
        return None

    def release(self, stats: RunStats) -> Iterator[_Prepared]:
        for v, (s, e, low, _) in self.edges.items():
            sign = -1 if low else 1
            ordered = sorted(self.held[v], key=lambda t: (sign * t[0], sign * t[1]))
            first = s if low else 0
            for i, (_, _, _, p) in enumerate(ordered):
                if first <= i < first + (e - s):
                    yield p
                else:
                    stats.drop("outside band")
            self.held[v] = []

    def describe(self) -> dict[str, Any]:
        return {
            "values": self.n,
            "kept": max(self.end - self.start, 0),
            "from": None if self.lo_value == _INF else self.lo_value,
            "to": None if self.hi_value == -_INF else self.hi_value,
        }


def run_sample(
    records: Iterable[Record],
    config: SampleConfig,
    stats: RunStats,
    first_pass: Iterable[Record] | None = None,
    fast: bool = True,
) -> Iterator[Record]:
    """Select records per ``config``; ``first_pass`` (a second reading of the same input) is
    needed when a quantile band is set. ``fast=False`` takes the general path everywhere (tests
    compare the two)."""
    sampler = Sampler(config, stats)
    if config.band is not None:
        if first_pass is None:
            raise UsageError("a quantile band needs a second reading of the input (pass 1)")
        sampler.first_pass(first_pass)
    if fast and sampler.fast_path_applies():
        records = iter(records)
        grade_or_none = not config.needs_query_stats or config.query_stats == "grade"
        if config.needs_query_stats and config.query_stats == "auto":
            first = next(records, None)
            if first is not None:
                grade_or_none = sampler.uses_grade_fields(first)
                records = itertools.chain((first,), records)
        if grade_or_none:
            yield from sampler.select_all(records)
            yield from sampler.finish()
            return
    offer = sampler.offer
    for p in sampler.with_query_stats(records):
        try:
            rec = offer(p)
        except BadInput as exc:
            sampler._unusable(p.rec, exc)
            continue
        if rec is not None:
            yield rec
    yield from sampler.finish()


def read_level_mix(records: Iterable[Record], level_field: str) -> dict[str, float]:
    """The level distribution of a reference set (``--match FILE``), in first-seen order."""
    counts: Counter[str] = Counter()
    for rec in records:
        v = get_path(rec.data, level_field)
        if is_missing(v) or v is None:
            raise BadInput(rec.source, rec.line, f"no {level_field} (needed by --match)")
        counts[value_key(v)] += 1
    if not counts:
        raise UsageError("--match: the reference file has no records")
    return {k: float(c) for k, c in counts.items()}


def _natural(value: str) -> tuple[Any, ...]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", value)])


def stage_of_values(counts: dict[str, int], n_stages: int) -> dict[str, int]:
    """Assign sorted values (numbers numerically, labels naturally: L2 < L10) to ``n_stages``
    contiguous stages of roughly equal size; stage 0 holds the lowest values."""
    total = sum(counts.values())
    out: dict[str, int] = {}
    acc = 0
    last = 0
    for v in sorted(counts, key=_natural):
        mid = acc + counts[v] / 2
        stage = max(last, min(n_stages - 1, int(n_stages * mid / total))) if total else 0
        out[v] = stage
        last = stage
        acc += counts[v]
    return out
