"""``still decontam``: drop or mark records that contain benchmark questions.

A click group with a default subcommand: ``still decontam [OPTIONS] [INPUTS]...`` runs
``still decontam run``; ``still decontam index build|show`` manage a reusable hashed index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import click

from still.cli._common import StreamOptions, run_stream, stream_options
from still.cli._groups import DefaultGroup


def _against_option(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--against",
        "against",
        multiple=True,
        required=required,
        metavar="NAME[,NAME...]",
        help="Benchmarks: files (JSONL, JSON list, Parquet; NAME=PATH names one) or built-in names "
        "(aime24, aime25, amc23, math500, gsm8k, gpqa_diamond, humaneval, mbpp, livecodebench; need "
        "`datasets` and network). Repeatable.",
    )


_BENCH_FIELD: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--bench-field",
    metavar="FIELD",
    help="Text field of benchmark files [default: first of problem, question, prompt, query, text].",
)


@click.group("decontam", cls=DefaultGroup)
def command() -> None:
    """Drop (or mark) records that contain benchmark questions.

    \b
    still decontam [run] [OPTIONS] [INPUTS]...     filter records (the default subcommand)
    still decontam index build --against ... -o DIR  compile a hashed index for reuse
    still decontam index show DIR                  print an index's manifest

    Matching is on normalised words (case, whitespace, punctuation, $...$, \\left/\\right, \\dfrac,
    leading zeros do not matter) with three methods: `ngram` (a shared word n-gram, n adapted to
    the question's length, 8 to 13), `containment` (most of the question's 5-grams inside the
    record) and `digits` (the same with every number masked). Boilerplate n-grams weigh nothing.
    See `still decontam run --help` for the options.
    """


_GROUP = cast(click.Group, command)


@_GROUP.command("run")
@_against_option(required=False)
@click.option("--index", "index_dir", metavar="DIR", help="Use an index from `still decontam index build`.")
@_BENCH_FIELD
@click.option(
    "--fields",
    "check",
    type=click.Choice(["query", "response", "both"]),
    default="query",
    show_default=True,
    help="Which record text to check for benchmark questions.",
)
@click.option(
    "--methods",
    default="ngram,containment,digits",
    show_default=True,
    metavar="LIST",
    help="Matching methods to use (comma-separated).",
)
@click.option("--mark", is_flag=True, help="Keep every record and add `decontam: [{benchmark, item, ...}]`.")
@click.option("--report", "report_path", metavar="FILE", help="Write per-benchmark counts and hit items (JSON).")
@click.option(
    "--containment",
    type=float,
    default=0.5,
    show_default=True,
    help="`containment` fires at this 1/df-weighted fraction of the question's 5-grams.",
)
@click.option(
    "--digits",
    type=float,
    default=0.8,
    show_default=True,
    help="`digits` fires at this fraction of the question's number-masked 5-grams.",
)
@click.option(
    "--max-df",
    type=int,
    default=10,
    show_default=True,
    help="An n-gram in more benchmark items than this is boilerplate and weighs nothing.",
)
@click.option("--ngram-min", type=int, default=8, show_default=True, help="Smallest n for the `ngram` method.")
@click.option("--ngram-max", type=int, default=13, show_default=True, help="Largest n for the `ngram` method.")
@stream_options
def run(
    stream: StreamOptions,
    against: tuple[str, ...],
    index_dir: str | None,
    bench_field: str | None,
    check: str,
    methods: str,
    mark: bool,
    report_path: str | None,
    containment: float,
    digits: float,
    max_df: int,
    ngram_min: int,
    ngram_max: int,
) -> None:
    """Drop (or --mark) records that contain a benchmark question.

    Give the benchmarks with --against (files or built-in names) or --index (a compiled index).
    Each hit names its benchmark, item (the item's id, else its 0-based position), method,
    score in [0,1] and span ([start, end) character offsets of the match in the checked field).

    \b
    Examples:
      still decontam --against math500.jsonl,aime24.jsonl < train.jsonl > clean.jsonl
      still decontam --index bench-idx --fields both --report hits.json train.jsonl
      still decontam --against data/gsm8k_test.jsonl --mark < train.jsonl | jq -c .decontam
    """
    from still.core.decontam import (
        DecontamConfig,
        DecontamIndex,
        DecontamReport,
        IndexParams,
        Matcher,
        load_benchmarks,
        run_decontam,
    )
    from still.core.errors import UsageError
    from still.core.jsonl import AtomicOutput

    if bool(against) == bool(index_dir):
        raise UsageError("give the benchmarks with --against NAME[,NAME...] or --index DIR (one of them)")
    params = IndexParams(
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        containment=containment,
        digits=digits,
        max_df=max_df,
        ngram_min=ngram_min,
        ngram_max=ngram_max,
    )
    params.check()
    index = DecontamIndex.load(index_dir) if index_dir else DecontamIndex.build(load_benchmarks(against, bench_field))
    matcher = Matcher(index, params)
    matcher.prepare_screen()
    report = DecontamReport(index)
    config = DecontamConfig(
        matcher, fields=stream.fields(), check=check, mark=mark, skip_bad=stream.on_error != "fail", report=report
    )

    def on_success(stats: Any) -> None:
        if report_path:
            import json

            with AtomicOutput(report_path) as out:
                out.write(json.dumps(report.as_dict(stats.read, config), indent=2).encode() + b"\n")
        if not stream.quiet:
            click.echo(report.summary(), err=True)

    run_stream("decontam", stream, lambda records, stats: run_decontam(records, config, stats), on_success)


@_GROUP.group("index")
def index_group() -> None:
    """Compile benchmarks into a reusable hashed index, or show one's manifest.

    An index is a directory: manifest.json (benchmarks with file checksums, item counts, format and
    normalisation versions, a checksum of the arrays) and index.npz (64-bit token hashes and token-id
    sequences). It saves size and time, it does not keep the benchmarks secret: the hashes are
    unsalted and in order, so a word list recovers most of the text. `still decontam --index DIR`
    uses it, e.g. in cron runs.
    """


_INDEX_GROUP = index_group


@_INDEX_GROUP.command("build")
@_against_option(required=True)
@_BENCH_FIELD
@click.option("-o", "--output", "output", required=True, metavar="DIR", help="Index directory to write (replaced).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors.")
def index_build(against: tuple[str, ...], bench_field: str | None, output: str, quiet: bool) -> None:
    """Compile --against benchmarks into an index directory.

    \b
    Example:
      still decontam index build --against math500.jsonl,aime24.jsonl,aime25.jsonl -o bench-idx
      still decontam --index bench-idx < train.jsonl > clean.jsonl
    """
    from still.core.decontam import DecontamIndex, load_benchmarks

    index = DecontamIndex.build(load_benchmarks(against, bench_field))
    manifest = index.save(output)
    if not quiet:
        names = ", ".join(f"{b['name']} {b['items']}" for b in manifest["benchmarks"])
        click.echo(f"still decontam index: {manifest['items']} items ({names}) -> {output}", err=True)


@_INDEX_GROUP.command("show")
@click.argument("index_dir", metavar="DIR")
def index_show(index_dir: str) -> None:
    """Print an index's manifest (JSON) on stdout after checking its checksum."""
    import json

    from still.core.decontam import DecontamIndex

    DecontamIndex.load(index_dir)
    with open(f"{index_dir}/manifest.json") as fh:
        click.echo(json.dumps(json.load(fh), indent=2))
