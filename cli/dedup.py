"""``still dedup``: remove exact and near-duplicate records."""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from still.cli._common import StreamOptions, run_stream, stream_options
from still.cli._dedup_options import index_options
from still.cli._groups import DefaultGroup
from still.cli.dedup_plan import plan


@click.group("dedup", cls=DefaultGroup)
def command() -> None:
    """Remove exact and near-duplicate records (one process, N workers, or a staged plan).

    \b
    still dedup [run] [OPTIONS] [INPUTS]...        deduplicate a stream (the default subcommand)
    still dedup plan sign|...|filter|commit|run    the same answer over many machines

    See `still dedup run --help` and `still dedup plan --help`; docs/dedup.md says which to use when.
    A file named like a subcommand: `still dedup run plan` or `still dedup ./plan`.
    """


_GROUP = cast(click.Group, command)
F = TypeVar("F", bound=Callable[..., Any])


def _before_numpy(fn: F) -> F:
    """What must happen before the options' handling imports numpy."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("semantic_model") is None:
            # MinHash makes no BLAS call, but OpenBLAS's threads (started with numpy) spin on the
            # cores the workers need (~1% of the CPU time measured); the workers' server inherits this
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        if kwargs.get("workers") != 1 and not kwargs.get("explain"):
            from still.core.dedup_features import prestart_workers

            # before any file is open: the workers inherit none (see prestart_workers)
            prestart_workers(kwargs.get("workers", 1))
        return fn(*args, **kwargs)

    return cast(F, wrapper)


@_GROUP.command("run")
@_before_numpy
@index_options
@click.option(
    "--keep",
    default="first",
    show_default=True,
    metavar="first|longest|max:FIELD",
    help="Which record of a cluster is kept: the first seen (streams), the one with the longest key "
    "text, or the highest numeric FIELD (both read the whole input first).",
)
@click.option(
    "--max-per-key",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Keep up to K records per cluster: with --key query, K responses per query (OpenThoughts keeps "
    "16 answers per question); copies of a kept record take no place.",
)
@click.option(
    "--mark", is_flag=True, help="Keep every record and add dedup: {cluster, representative, jaccard, rank, match}."
)
@click.option("--clusters", "clusters_path", metavar="FILE", help="Write clusters with duplicates as JSONL.")
@click.option(
    "--state",
    "state_dir",
    metavar="DIR",
    envvar="STILL_DEDUP_STATE",
    show_envvar=True,
    help="Persist the index here and deduplicate against every earlier run (cron); updated only "
    "after the output is complete.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="When another run holds the --state directory, wait for it instead of failing (exit 1).",
)
@click.option("--redis", "redis_url", metavar="URL", hidden=True, help="Retired: see docs/dedup.md.")
@click.option("--redis-prefix", hidden=True, help="Retired with --redis.")
@click.option(
    "--block-size", type=click.IntRange(min=1), default=2048, show_default=True, help="Records decided per batch."
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Processes that sign blocks: N - 1 workers and this one, between its decisions (0: every core); "
    "the output is the same for every N.",
)
@click.option(
    "--semantic",
    "semantic_model",
    metavar="MODEL",
    help="Then drop semantic duplicates: SemDeDup over MODEL's embeddings (a local embedding model); "
    "see docs/dedup.md.",
)
@click.option("--semantic-only", is_flag=True, help="With --semantic: skip the exact and MinHash stages.")
@click.option(
    "--semantic-threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    help="Semantic duplicates: cosine similarity above this (SemDeDup's 1 - eps with eps 0.05).",
)
@click.option(
    "--semantic-clusters",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="k-means clusters [default 0: one per 1000 distinct texts].",
)
@click.option(
    "--embeddings",
    "embeddings_path",
    metavar="FILE",
    help="Cache the embeddings here (.npz); reused when the texts, model and settings are unchanged.",
)
@click.option(
    "--embed-batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Texts per model pass."
)
@click.option("--embed-device", default="auto", show_default=True, help="Embedding model device: cpu, cuda, cuda:N.")
@click.option("--explain", is_flag=True, help="Print the LSH bands/rows and P(candidate | J) on stderr, then exit.")
@stream_options
def run(
    stream: StreamOptions,
    index: dict[str, Any],
    keep: str,
    max_per_key: int,
    mark: bool,
    clusters_path: str | None,
    state_dir: str | None,
    wait: bool,
    redis_url: str | None,
    redis_prefix: str | None,
    block_size: int,
    workers: int,
    explain: bool,
    semantic_model: str | None,
    semantic_only: bool,
    semantic_threshold: float,
    semantic_clusters: int,
    embeddings_path: str | None,
    embed_batch_size: int,
    embed_device: str,
) -> None:
    """Remove exact and near-duplicate records.

    Exact: xxh3 of the normalised key text. Near: MinHash (datasketch affine32) over word n-gram
    shingles, LSH candidates, each confirmed by the exact Jaccard similarity of the shingle sets;
    a record joins a cluster only if it is similar enough to the cluster's representative itself.
    Output keeps input order. Dropped records are counted as "exact duplicate" (with --key query:
    same query and same response), "near duplicate", or "same query beyond --max-per-key" (another
    response to a query kept --max-per-key times already; a warning says so).

    \b
    Examples:
      still dedup < traces.jsonl > unique.jsonl
      still dedup --key query --max-per-key 16 --state ~/.cache/still/dedup new.jsonl.gz
      still dedup --mark --clusters clusters.jsonl data.jsonl | jq -c .dedup
      still dedup --semantic ./embedder --embeddings emb.npz data.jsonl   # + "semantic duplicate"
    """
    from still.core import minhash as mh
    from still.core.dedup import DedupConfig, dedup

    if redis_url or redis_prefix:
        raise click.UsageError(
            "--redis is retired: for runs over time (cron) use --state DIR, which several runs may share "
            "(--wait); for many machines use the staged plan (still dedup plan --help); for many cores "
            "--workers N. docs/dedup.md says which to use when.",
        )
    config = DedupConfig(
        **index,
        keep=keep,
        max_per_key=max_per_key,
        mark=mark,
        clusters_path=clusters_path,
        state_dir=state_dir,
        block_size=block_size,
        fields=stream.fields(),
        wait=wait,
        workers=workers,
    )
    if explain:
        b, r = config.lsh_params()
        click.echo(mh.explain(config.threshold, config.num_perm, b, r), err=True)
        return
    # --state is saved only after the output has been written and renamed (on_success).
    pending: list[Callable[[], None]] = []

    def commit(stats: object) -> None:
        for save in pending:
            save()

    process: Callable[[Any, Any], Any] = lambda records, stats: dedup(records, config, stats, pending)  # noqa: E731
    if semantic_model is not None:
        process = _with_semantic(
            process,
            config,
            semantic_only,
            model=semantic_model,
            threshold=semantic_threshold,
            clusters=semantic_clusters,
            embeddings_path=embeddings_path,
            batch_size=embed_batch_size,
            device=embed_device,
            seed=index["seed"],
        )
    elif semantic_only:
        from still.core.errors import UsageError

        raise UsageError("--semantic-only needs --semantic MODEL")
    # the streaming path's workers (or its one process) parse and check every line themselves
    parse = keep != "first" or semantic_model is not None
    # what is alive now (the imported modules) lives to the end: the collector need not walk it
    # again on every full collection (~1% of the CPU time measured)
    gc.freeze()
    run_stream("dedup", stream, process, on_success=commit, parse=parse)


def _with_semantic(
    earlier: Callable[[Any, Any], Any], config: Any, semantic_only: bool, **options: Any
) -> Callable[[Any, Any], Any]:
    """The exact/MinHash stages (unless --semantic-only), then the semantic stage on what they keep."""
    from still.core.errors import UsageError
    from still.core.semantic_dedup import SemanticConfig, semantic_dedup

    if config.mark or config.state_dir:
        raise UsageError("--semantic does not combine with --mark or --state yet")
    semantic = SemanticConfig(
        key=config.key, keep=config.keep, fields=config.fields, group_identical=not semantic_only, **options
    )
    semantic.validate()

    def process(records: Any, stats: Any) -> Any:
        return semantic_dedup(records if semantic_only else earlier(records, stats), semantic, stats)

    return process


_GROUP.add_command(plan)
