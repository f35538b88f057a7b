"""The ``decontam`` command's core: drop (or mark) records that contain benchmark items."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from still import __version__
from still.core.decontam.index import DecontamIndex
from still.core.decontam.matcher import Hit, Matcher
from still.core.decontam.normalise import NORMALISE_VERSION
from still.core.decontam.tables import SEED_N, IndexParams
from still.core.errors import BadInput
from still.core.fields import Fields
from still.core.records import Record
from still.core.stats import RunStats

FIELD_CHOICES = ("query", "response", "both")


@dataclass
class DecontamReport:
    """Per-benchmark counts and the benchmark items that were hit."""

    index: DecontamIndex
    records_hit: int = 0
    bench_records: Counter[int] = field(default_factory=Counter)
    bench_methods: dict[int, Counter[str]] = field(default_factory=dict)
    item_records: Counter[int] = field(default_factory=Counter)

    def add(self, hits: list[Hit]) -> None:
        self.records_hit += 1
        for b in sorted({h.bench for h in hits}):
            self.bench_records[b] += 1
        for item in sorted({h.item for h in hits}):
            self.item_records[item] += 1
        for h in hits:
            self.bench_methods.setdefault(h.bench, Counter())[h.method] += 1

    def as_dict(self, read: int, config: DecontamConfig) -> dict[str, Any]:
        benches = []
        for b, meta in enumerate(self.index.benchmarks):
            hit_items = [
                {"item": self.index.item_ids[i], "records": self.item_records[i]}
                for i in sorted(self.item_records)
                if int(self.index.item_bench[i]) == b
            ]
            benches.append(
                {
                    **meta,
                    "items_hit": len(hit_items),
                    "records_hit": self.bench_records[b],
                    "hits_by_method": dict(sorted(self.bench_methods.get(b, Counter()).items())),
                    "hit_items": hit_items,
                }
            )
        p = config.params
        return {
            "command": "decontam",
            "still_version": __version__,
            "fields": config.check,
            "mode": "mark" if config.mark else "drop",
            "parameters": {
                "methods": list(p.methods),
                "containment": p.containment,
                "digits": p.digits,
                "max_df": p.max_df,
                "ngram_min": p.ngram_min,
                "ngram_max": p.ngram_max,
                "seed_n": SEED_N,
                "normalise_version": NORMALISE_VERSION,
            },
            "records": {"read": read, "contaminated": self.records_hit},
            "benchmarks": benches,
        }

    def summary(self) -> str:
        parts = [f"{self.index.benchmarks[b]['name']} {n}" for b, n in sorted(self.bench_records.items())]
        detail = f" ({', '.join(parts)})" if parts else ""
        return (
            f"still decontam: {self.records_hit} contaminated records{detail}; "
            f"{len(self.item_records)} of {self.index.n_items} benchmark items hit"
        )


@dataclass
class DecontamConfig:
    """One run: the compiled index it matches with (built or loaded before any input is read, so a
    bad index stops the command before the stream starts) and how records are checked."""

    matcher: Matcher
    fields: Fields = field(default_factory=Fields)
    check: str = "query"  # query | response | both
    mark: bool = False
    skip_bad: bool = False  # --on-error skip/quarantine: count records without the field as errors
    report: DecontamReport | None = None  # filled during the run; the caller writes it after success

    @property
    def params(self) -> IndexParams:
        return self.matcher.params


def _texts(rec: Record, config: DecontamConfig) -> list[tuple[str, str]]:
    fields = config.fields
    if config.check == "query":
        return [("query", fields.query(rec))]
    if config.check == "response":
        return [("response", fields.response(rec))]
    out = []
    for name, getter in (("query", fields.query), ("response", fields.response)):
        try:
            out.append((name, getter(rec)))
        except BadInput:
            continue
    if not out:
        raise BadInput(rec.source, rec.line, "no query or response field")
    return out


RECORD_BLOCK = 2048  # records matched at once: fewer, fuller screen chunks (2048 x 1 KB: 2 MB held)


def run_decontam(records: Iterable[Record], config: DecontamConfig, stats: RunStats) -> Iterator[Record]:
    """Drop (or with ``mark`` annotate) records that contain benchmark items.

    Records are matched in blocks of ``RECORD_BLOCK`` (:meth:`Matcher.match_many`); the output
    and the accounting are the same as matching them one at a time.
    """
    matcher = config.matcher
    index = matcher.index
    report = config.report if config.report is not None else DecontamReport(index)
    mark = config.mark
    block: list[Record] = []
    pairs: list[tuple[str, str]] = []  # the block's (text, field name) pairs, record by record
    counts: list[int] = []  # pairs per record (--fields both); empty while every record has one

    def flush() -> Iterator[Record]:
        found = matcher.match_many(pairs)
        if counts:  # a record's hits are those of its texts, in order
            merged: list[list[Hit]] = []
            at = 0
            for n in counts:
                merged.append([h for hits in found[at : at + n] for h in hits])
                at += n
            found = merged
        for rec, hits in zip(block, found, strict=True):
            if hits:
                report.add(hits)
            if mark:
                rec.changed()["decontam"] = [h.as_dict(index) for h in hits]
                yield rec
            elif hits:
                stats.drop("contaminated")
            else:
                yield rec
        block.clear()
        pairs.clear()
        counts.clear()

    query_only = config.check == "query"
    query = config.fields.query
    for rec in records:
        try:
            if query_only:
                pairs.append((query(rec), "query"))
            else:
                texts = [(text, name) for name, text in _texts(rec, config)]
                if len(texts) != 1 and not counts:
                    counts.extend([1] * len(block))
                pairs.extend(texts)
                if counts or len(texts) != 1:
                    counts.append(len(texts))
        except BadInput as exc:
            if not config.skip_bad:
                yield from flush()  # the records before it, as one at a time would have
                raise
            stats.error(exc.message)
            continue
        block.append(rec)
        if len(block) >= RECORD_BLOCK:
            yield from flush()
    yield from flush()
    stats.extra["decontam"] = {
        "contaminated": report.records_hit,
        "by_benchmark": {index.benchmarks[b]["name"]: n for b, n in sorted(report.bench_records.items())},
        "items_hit": len(report.item_records),
    }
