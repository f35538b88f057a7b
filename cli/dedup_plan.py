"""``still dedup plan``: the staged MinHash plan, one subcommand per stage, over files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from still.cli._dedup_options import index_options, stream_option_subset

if TYPE_CHECKING:
    from still.core.dedup_plan import PlanParams


@click.group("plan")
def plan() -> None:
    """The staged plan: the answer of one `still dedup` process, over many machines.

    \b
    still dedup plan sign --shard I/N DIR INPUTS...       per shard: keys, signatures, band buckets
    still dedup plan buckets [--bucket B] DIR              per bucket: candidate pairs
    still dedup plan edges [--bucket B] DIR                per bucket: pairs verified by exact Jaccard
    still dedup plan clusters DIR                          once: replay keep-first in input order
    still dedup plan filter --shard I/N -o OUT DIR INPUTS...  per shard: the records kept
    still dedup plan commit DIR                            with --state: add the new records to it
    still dedup plan run --shards N -o OUT [--executor local|ray] DIR INPUTS...   all of them

    Give every stage the same INPUTS in the same order (input order decides who is first); file
    K belongs to shard K mod N. Each stage writes under a temporary name and renames, so a failed
    stage can simply be run again. Jobs of one stage can run at once (make -j, xargs -P, Slurm).
    With `sign --state DIR` (shard 0 reads it) the records of earlier runs count as earlier than
    every input, as in `still dedup --state DIR`; `commit` (after every filter job) updates DIR.
    """


_SHARD = click.option("--shard", required=True, metavar="I/N", help="This job's share: input files K with K mod N = I.")
_BUCKET = click.option("--bucket", type=click.IntRange(min=0), help="Only this bucket [default: all].")
_PLAN_DIR = click.argument("plan_dir", metavar="DIR", type=click.Path(file_okay=False))
_INPUTS = click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
_STATE = click.option(
    "--state",
    "state_dir",
    metavar="DIR",
    envvar="STILL_DEDUP_STATE",
    show_envvar=True,
    help="Deduplicate against every earlier run kept in DIR (the --state of still dedup, either may "
    "update it); DIR is updated only after every filter job succeeded (plan commit, or the end of plan run).",
)
_WAIT = click.option(
    "--wait", is_flag=True, help="When another run holds the --state directory, wait for it instead of failing."
)
# how inputs are read: key text fields, the bad-record policy, the line limit (as still dedup reads)
_READING = stream_option_subset("query_field", "response_field", "on_error", "max_line_mb")
_GZIP_LEVEL = stream_option_subset("gzip_level")


def _params(
    index: dict[str, Any],
    buckets: int,
    block_size: int,
    state_dir: str | None,
    wait: bool,
    query_field: str | None,
    response_field: str | None,
    on_error: str,
    max_line_mb: float,
) -> PlanParams:
    from still.core import dedup_plan as dp
    from still.core.dedup import DedupConfig
    from still.core.fields import Fields

    fields = Fields(query_path=query_field, response_path=response_field)
    config = DedupConfig(**index, block_size=block_size, fields=fields, state_dir=state_dir, wait=wait)
    params = dp.PlanParams(config, buckets, on_error, int(max_line_mb * 1024 * 1024))
    params.policy()  # a bad --on-error is a usage error before any work
    return params


@plan.command("sign")
@_SHARD
@click.option(
    "--buckets", type=click.IntRange(min=1), default=16, show_default=True, help="Band-key buckets (edge jobs)."
)
@index_options
@click.option("--block-size", type=click.IntRange(min=1), default=2048, show_default=True, help="Records per batch.")
@_STATE
@_WAIT
@_READING
@_PLAN_DIR
@_INPUTS
def sign(
    shard: str,
    buckets: int,
    index: dict[str, Any],
    block_size: int,
    state_dir: str | None,
    wait: bool,
    plan_dir: str,
    inputs: tuple[str, ...],
    **reading: Any,
) -> None:
    """Exact keys, shingle sets and LSH band keys of this shard's files, written by band bucket.

    Records without a key text and malformed lines go to --on-error here (filter leaves them out
    again). With --state, shard 0 also reads the state (every shard must be given the same DIR).
    With --on-error quarantine=FILE give each shard job its own FILE.
    """
    from still.core import dedup_plan as dp
    from still.core import dedup_plan_inputs as dpi
    from still.core import dedup_plan_state as dps
    from still.core.stats import RunStats

    params = _params(index, buckets, block_size, state_dir, wait, **reading)
    part = dp.Shard.parse(shard)
    if params.state_dir and part.index == 0:
        reps = dps.snapshot_state(plan_dir, params)
        click.echo(f"dedup plan sign {shard}: {reps} representatives read from {state_dir}", err=True)
    stats = RunStats("dedup plan sign")
    dpi.sign(plan_dir, inputs, part, params, stats)
    policy = params.policy()
    if policy.path is not None:
        dpi.write_rejected(plan_dir, [k for k, _ in part.files(inputs)], policy.path)
    errors = f", {stats.n_errors} rejected (--on-error)" if stats.errors else ""
    click.echo(f"dedup plan sign {shard}: {stats.written} records signed{errors}", err=True)


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
@_GZIP_LEVEL
@_PLAN_DIR
@_INPUTS
def filter_(shard: str, out_dir: str, gzip_level: int, plan_dir: str, inputs: tuple[str, ...]) -> None:
    """Write this shard's files without the removed records, in input order.

    The fields, --on-error and --max-line-mb are sign's (kept in DIR): records sign rejected are
    left out and counted as errors again.
    """
    from still.core import dedup_plan as dp
    from still.core import dedup_plan_inputs as dpi
    from still.core.stats import RunStats

    stats = RunStats("dedup plan filter")
    dpi.filter_shard(plan_dir, inputs, dp.Shard.parse(shard), out_dir, stats, gzip_level)
    stats.check_balance()
    click.echo(stats.summary(), err=True)


@plan.command("commit")
@_WAIT
@_PLAN_DIR
def commit(wait: bool, plan_dir: str) -> None:
    """With --state: add this plan's new representatives to the state, once every filter job is done.

    Refused (exit 1, the state unchanged) while an input is not filtered, and when another run
    updated the state since sign read it (its outputs do not account for that run: plan again).
    Running it again after it succeeded changes nothing.
    """
    from still.core import dedup_plan_state as dps

    added = dps.commit(plan_dir, wait)
    click.echo(f"dedup plan commit: {added} new representatives in the state", err=True)


@plan.command("run")
@click.option(
    "--shards", type=click.IntRange(min=0), default=0, help="Sign and filter jobs [default: one per input file]."
)
@click.option(
    "--buckets", type=click.IntRange(min=1), default=16, show_default=True, help="Band-key buckets (edge jobs)."
)
@index_options
@click.option("--block-size", type=click.IntRange(min=1), default=2048, show_default=True, help="Records per batch.")
@_STATE
@_WAIT
@_READING
@_GZIP_LEVEL
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
    help="The Ray cluster to use [default: start a local one]; DIR, INPUTS, OUT and --state must be on a "
    "file system every node sees.",
)
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="Write OUT/NNNNN-NAME per input file.")
@_PLAN_DIR
@_INPUTS
def run_all(
    shards: int,
    buckets: int,
    index: dict[str, Any],
    block_size: int,
    state_dir: str | None,
    wait: bool,
    gzip_level: int,
    executor: str,
    jobs: int,
    ray_address: str | None,
    out_dir: str,
    plan_dir: str,
    inputs: tuple[str, ...],
    **reading: Any,
) -> None:
    """Every stage of the plan, each stage's jobs at once (here or on Ray); the kept set of one process.

    With --state the state is read first, held locked, and committed after the last filter job.
    """
    from still.core import dedup_executor as de
    from still.core.dedup_features import resolve_workers
    from still.core.stats import RunStats

    params = _params(index, buckets, block_size, state_dir, wait, **reading)
    run = de.PlanRun(plan_dir, inputs, shards or len(inputs), params, out_dir, gzip_level)
    stats = RunStats("dedup plan run")
    runner = de.make_executor(executor, resolve_workers(jobs), ray_address)
    try:
        de.run_plan(run, runner, stats)
    finally:
        runner.close()
    stats.check_balance()
    if params.state_dir:
        added = stats.extra["state_representatives_added"]
        click.echo(f"dedup plan run: {added} new representatives in {params.state_dir}", err=True)
    click.echo(stats.summary(), err=True)
