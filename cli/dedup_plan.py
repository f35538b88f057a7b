"""``still dedup plan``: the staged MinHash plan, one subcommand per stage, over files."""

from __future__ import annotations

from typing import Any

import click

from still.cli._dedup_options import index_options


@click.group("plan")
def plan() -> None:
    """The staged plan: the answer of one `still dedup` process, over many machines.

    \b
    still dedup plan sign --shard I/N DIR INPUTS...       per shard: keys, signatures, band buckets
    still dedup plan buckets [--bucket B] DIR              per bucket: candidate pairs
    still dedup plan edges [--bucket B] DIR                per bucket: pairs verified by exact Jaccard
    still dedup plan clusters DIR                          once: replay keep-first in input order
    still dedup plan filter --shard I/N -o OUT DIR INPUTS...  per shard: the records kept
    still dedup plan run --shards N -o OUT [--executor local|ray] DIR INPUTS...   all of them

    Give every stage the same INPUTS in the same order (input order decides who is first); file
    K belongs to shard K mod N. Each stage writes under a temporary name and renames, so a failed
    stage can simply be run again. Jobs of one stage can run at once (make -j, xargs -P, Slurm).
    """


_SHARD = click.option("--shard", required=True, metavar="I/N", help="This job's share: input files K with K mod N = I.")
_BUCKET = click.option("--bucket", type=click.IntRange(min=0), help="Only this bucket [default: all].")
_PLAN_DIR = click.argument("plan_dir", metavar="DIR", type=click.Path(file_okay=False))
_INPUTS = click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))


@plan.command("sign")
@_SHARD
@click.option(
    "--buckets", type=click.IntRange(min=1), default=16, show_default=True, help="Band-key buckets (edge jobs)."
)
@index_options
@click.option("--block-size", type=click.IntRange(min=1), default=2048, show_default=True, help="Records per batch.")
@_PLAN_DIR
@_INPUTS
def sign(
    shard: str,
    buckets: int,
    index: dict[str, Any],
    block_size: int,
    plan_dir: str,
    inputs: tuple[str, ...],
) -> None:
    """Exact keys, shingle sets and LSH band keys of this shard's files, written by band bucket."""
    from still.core import dedup_plan as dp
    from still.core.dedup import DedupConfig
    from still.core.stats import RunStats

    config = DedupConfig(**index, block_size=block_size)
    stats = RunStats("dedup plan sign")
    dp.sign(plan_dir, inputs, dp.Shard.parse(shard), dp.PlanParams(config, buckets), stats)
    click.echo(f"dedup plan sign {shard}: {stats.read} records signed", err=True)


@plan.command("buckets")
@_BUCKET
@_PLAN_DIR
def buckets(bucket: int | None, plan_dir: str) -> None:
    """Candidate pairs: records sharing a band key (the first of each exact key)."""
    from still.core import dedup_plan as dp

    dp.candidate_pairs(plan_dir, bucket)


@plan.command("edges")
@_BUCKET
@_PLAN_DIR
def edges(bucket: int | None, plan_dir: str) -> None:
    """Edges: candidate pairs whose exact Jaccard similarity reaches the threshold."""
    from still.core import dedup_plan as dp

    dp.verify_edges(plan_dir, bucket)


@plan.command("clusters")
@_PLAN_DIR
def clusters(plan_dir: str) -> None:
    """Replay keep-first from the edges in input order: the records to remove."""
    from still.core import dedup_plan as dp

    exact, near = dp.replay_clusters(plan_dir)
    click.echo(f"dedup plan clusters: remove {exact} exact and {near} near duplicates", err=True)


@plan.command("filter")
@_SHARD
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="Write OUT/NNNNN-NAME per input file.")
@_PLAN_DIR
@_INPUTS
def filter_(shard: str, out_dir: str, plan_dir: str, inputs: tuple[str, ...]) -> None:
    """Write this shard's files without the removed records, in input order."""
    from still.core import dedup_plan as dp
    from still.core.stats import RunStats

    stats = RunStats("dedup plan filter")
    dp.filter_shard(plan_dir, inputs, dp.Shard.parse(shard), out_dir, stats)
    stats.check_balance()
    click.echo(stats.summary(), err=True)


@plan.command("run")
@click.option(
    "--shards", type=click.IntRange(min=0), default=0, help="Sign and filter jobs [default: one per input file]."
)
@click.option(
    "--buckets", type=click.IntRange(min=1), default=16, show_default=True, help="Band-key buckets (edge jobs)."
)
@index_options
@click.option("--block-size", type=click.IntRange(min=1), default=2048, show_default=True, help="Records per batch.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the jobs run: processes of this machine, or a Ray cluster (pip install 'still[ray]').",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=0,
    help="Jobs at once: local processes, or the CPUs of a Ray instance started here [default 0: every core].",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    show_envvar=True,
    metavar="ADDR",
    help="The Ray cluster to use [default: start a local one]; DIR, INPUTS and OUT must be on a file "
    "system every node sees.",
)
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="Write OUT/NNNNN-NAME per input file.")
@_PLAN_DIR
@_INPUTS
def run_all(
    shards: int,
    buckets: int,
    index: dict[str, Any],
    block_size: int,
    executor: str,
    jobs: int,
    ray_address: str | None,
    out_dir: str,
    plan_dir: str,
    inputs: tuple[str, ...],
) -> None:
    """Every stage of the plan, each stage's jobs at once (here or on Ray); the kept set of one process."""
    from still.core import dedup_executor as de
    from still.core import dedup_plan as dp
    from still.core.dedup import DedupConfig
    from still.core.dedup_features import resolve_workers
    from still.core.stats import RunStats

    config = DedupConfig(**index, block_size=block_size)
    run = de.PlanRun(plan_dir, inputs, shards or len(inputs), dp.PlanParams(config, buckets), out_dir)
    stats = RunStats("dedup plan run")
    runner = de.make_executor(executor, resolve_workers(jobs), ray_address)
    try:
        de.run_plan(run, runner, stats)
    finally:
        runner.close()
    stats.check_balance()
    click.echo(stats.summary(), err=True)
