"""``still grade --model M``: responses generated through the engines, then verified and graded.

The input may hold queries, responses of other models (``generate | verify`` output), or both.
Pass 1 splits it into two spools: response lines (a ``model`` and a response) are kept as they
are, and every distinct query (a query line, or the first response line of an id, stripped of its
response fields) goes to the ``still generate`` core, which samples ``k`` responses from each
``--model``. Pass 2 grades the kept lines and the generated ones together, so a query's grade
holds the input's models and the generating ones (ZMath: the student generates here, the teachers'
traces come in). Output: the input's response lines in input order, then the generated lines
(query order, then ``--model`` order, then sample index). Memory: the set of query ids seen (the
generate core keeps the same), plus what ``grade_records`` keeps.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import orjson

from still.core.errors import BadInput
from still.core.fields import get_path, is_missing
from still.core.generate import GenerateConfig, generate_records
from still.core.grade import GradeConfig, grade_records
from still.core.journal import Journal
from still.core.jsonl import Record
from still.core.stats import RunStats

# fields a response line carries that must not pass to the query the generate core receives
RESPONSE_FIELDS = (
    "response",
    "model",
    "sample_idx",
    "finish_reason",
    "n_tokens",
    "prompt_tokens",
    "seed",
    "sampling",
    "verify",
    "grade",
    "difficulty",
)

BadHandler = Callable[[str, int, str, bytes], None]


def rejecting(stats: RunStats, fail: bool) -> BadHandler:
    """``--on-error`` for records made here (no raw input line to quarantine): fail, or count."""

    def bad(source: str, line: int, message: str, raw: bytes) -> None:
        if fail:
            raise BadInput(source, line, message)
        stats.error(message.split(" (", 1)[0])

    return bad


def _write(spool: IO[bytes], rec: Record, raw: bytes) -> None:
    spool.write(orjson.dumps([rec.source, rec.line]) + b"\t" + raw)


def _read(path: str) -> Iterator[Record]:
    with open(path, "rb", buffering=1 << 20) as spool:
        for line in spool:
            where, raw = line.split(b"\t", 1)
            source, lineno = orjson.loads(where)
            yield Record(orjson.loads(raw), raw, source, lineno)


def _split(
    records: Iterable[Record], config: GradeConfig, input_stats: RunStats, kept: IO[bytes], queries: IO[bytes]
) -> tuple[int, int]:
    """Response lines to ``kept``, one query per id to ``queries``; returns both counts."""
    seen: set[str] = set()
    n_kept = n_queries = 0
    fields = config.fields
    for rec in records:
        model = get_path(rec.data, config.model_field)
        if is_missing(model) or model is None:
            _write(queries, rec, rec.to_bytes())  # a query line: the generate core reads it
            n_queries += 1
            continue
        try:
            rid = fields.record_id(rec)
            fields.response(rec)
        except BadInput as exc:
            input_stats.reject(rec, exc.message)
            continue
        _write(kept, rec, rec.to_bytes())
        n_kept += 1
        if rid not in seen:
            seen.add(rid)
            query = {k: v for k, v in rec.data.items() if k not in RESPONSE_FIELDS}
            _write(queries, rec, orjson.dumps(query) + b"\n")
    return n_kept, n_queries


def generate_and_grade(
    records: Iterable[Record],
    generate: GenerateConfig,
    config: GradeConfig,
    input_stats: RunStats,
    stats: RunStats,
    fail: bool,
    journal: Journal | None = None,
) -> Iterator[Record]:
    """Graded records: the input's responses and ``generate``'s, verified and graded together.

    Accounts: ``input_stats`` for input lines (kept, sent to generation, or rejected); the generate
    core's own for queries (``stats.extra["generate"]``); ``stats`` for response records (kept and
    generated: written or rejected). What the later stages reject fails the run when ``fail``,
    else is counted in the account it belongs to. With a ``journal`` every generated response is
    journalled as it finishes and a resumed run generates only what the journal lacks.
    """
    with tempfile.TemporaryDirectory(prefix="still-grade-gen-") as tmp:
        kept_path, queries_path = os.path.join(tmp, "kept"), os.path.join(tmp, "queries")
        with open(kept_path, "wb") as kept, open(queries_path, "wb") as queries:
            n_kept, n_query_lines = _split(records, config, input_stats, kept, queries)
        input_stats.written = n_kept + n_query_lines  # every input line went on: kept or to generation
        query_stats = RunStats("grade")
        query_stats.on_bad = rejecting(query_stats, fail)

        def responses() -> Iterator[Record]:
            for rec in _read(kept_path):
                stats.read += 1
                yield rec
            query_recs = _counted(_read(queries_path), query_stats)
            for n, line in enumerate(generate_records(query_recs, generate, query_stats, journal), 1):
                stats.read += 1
                yield Record(orjson.loads(line), line, "<generated>", n)

        yield from grade_records(responses(), config, stats)
        query_stats.check_balance()
        stats.extra["input"] = {"lines": input_stats.read, "responses_kept": n_kept, "query_lines": n_query_lines}
        stats.extra["generate"] = {
            "queries": query_stats.read,
            "generated_for": query_stats.written,
            "rejected": dict(sorted(query_stats.errors.items())),
            **{
                k: query_stats.extra[k]
                for k in ("responses", "resumed", "finish_reasons", "completion_tokens")
                if k in query_stats.extra
            },
        }


def _counted(records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
    for rec in records:
        stats.read += 1
        yield rec
