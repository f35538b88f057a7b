"""Run the whole staged plan (``dedup_plan``) at once: its jobs in local processes or on Ray.

The stages are the functions ``still dedup plan sign|buckets|edges|clusters|filter|commit``
call; an executor only decides where each stage's jobs run (they read and write the plan directory,
so on a Ray cluster of several machines the plan directory, the inputs and the output directory
must be on a file system every node sees, as for Slurm). A stage starts when every job of the
one before has finished, so the kept set is the one-process answer whatever the executor.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from still.core.dedup_plan import PlanParams, Shard, candidate_pairs, replay_clusters, verify_edges
from still.core.dedup_plan_inputs import filter_shard, forget_other_inputs, sign, write_rejected
from still.core.dedup_plan_state import commit_into, open_state, snapshot
from still.core.errors import StillError, UsageError
from still.core.procpool import start_forkserver
from still.core.stats import RunStats

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class PlanRun:
    """One whole plan: where it lives, what it reads, how it is cut, where the kept records go."""

    plan: str
    inputs: tuple[str, ...]
    shards: int
    params: PlanParams
    out_dir: str
    gzip_level: int = 1  # of outputs named .gz


@dataclass(frozen=True)
class JobCounts:
    """What a sign or filter job read, wrote and dropped (its RunStats, as plain values)."""

    read: int = 0
    written: int = 0
    dropped: tuple[tuple[str, int], ...] = ()
    errors: tuple[tuple[str, int], ...] = ()  # records --on-error took (counted again by filter)

    @classmethod
    def of(cls, stats: RunStats) -> JobCounts:
        return cls(stats.read, stats.written, tuple(sorted(stats.dropped.items())), tuple(sorted(stats.errors.items())))


def _sign_job(run: PlanRun, shard: int) -> JobCounts:
    stats = RunStats("dedup plan sign")
    sign(run.plan, run.inputs, Shard(shard, run.shards), run.params, stats)
    return JobCounts.of(stats)


def _bucket_job(run: PlanRun, bucket: int) -> JobCounts:
    candidate_pairs(run.plan, bucket)
    verify_edges(run.plan, bucket)
    return JobCounts()


def _clusters_job(run: PlanRun) -> JobCounts:
    replay_clusters(run.plan)
    return JobCounts()


def _filter_job(run: PlanRun, shard: int) -> JobCounts:
    stats = RunStats("dedup plan filter")
    filter_shard(run.plan, run.inputs, Shard(shard, run.shards), run.out_dir, stats, run.gzip_level)
    return JobCounts.of(stats)


Job = Callable[..., JobCounts]


class Executor(Protocol):
    def map(self, job: Job, args: Sequence[tuple[Any, ...]]) -> list[JobCounts]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Jobs in up to ``jobs`` processes of this machine (1: in this process)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.pool: ProcessPoolExecutor | None = None
        if jobs > 1:
            # forkserver: jobs do not inherit this process's open files, locks or threads; its
            # server imports the jobs' code once, in a neutral folder (see start_forkserver); each
            # job is then started in this process's folder, with its sys.path
            start_forkserver([__name__])
            self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("forkserver"))

    def map(self, job: Job, args: Sequence[tuple[Any, ...]]) -> list[JobCounts]:
        if self.pool is None or len(args) < 2:
            return [job(*a) for a in args]
        futures = [self.pool.submit(job, *a) for a in args]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


class RayExecutor:
    """Jobs as Ray tasks (one CPU each) on the cluster at ``address``, or on a local Ray instance
    started here with ``cpus`` CPUs (and stopped at the end) when there is no address."""

    def __init__(self, address: str | None, cpus: int) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'still[ray]'") from None
        self.ray: Any = ray
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
            if address:
                ray.init(address=address, **options)
            else:
                # a small object store: jobs exchange files, not objects
                ray.init(num_cpus=cpus, object_store_memory=100 * 1024 * 1024, **options)
        self.remote: dict[Job, Any] = {}

    def map(self, job: Job, args: Sequence[tuple[Any, ...]]) -> list[JobCounts]:
        remote = self.remote.get(job)
        if remote is None:
            remote = self.remote[job] = self.ray.remote(num_cpus=1, max_retries=0)(job)
        try:
            return list(self.ray.get([remote.remote(*a) for a in args]))
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, StillError):
                raise StillError(str(cause)) from None
            raise

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(name: str, jobs: int, ray_address: str | None = None) -> Executor:
    if name == "local":
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(ray_address or os.environ.get("RAY_ADDRESS"), jobs)
    raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}")


def run_plan(run: PlanRun, executor: Executor, stats: RunStats) -> None:
    """sign (per shard), buckets and edges (per bucket), clusters (once), filter (per shard);
    with --state, the state is read before and committed after them, held locked throughout."""
    state = open_state(run.params) if run.params.state_dir else None
    try:
        forget_other_inputs(run.plan, len(run.inputs))
        if state is not None:
            snapshot(run.plan, state, run.params)
        signed = executor.map(_sign_job, [(run, i) for i in range(run.shards)])
        policy = run.params.policy()
        if policy.path is not None:  # --on-error quarantine=FILE: every file's bad lines, in input order
            write_rejected(run.plan, range(len(run.inputs)), policy.path)
        executor.map(_bucket_job, [(run, b) for b in range(run.params.buckets)])
        executor.map(_clusters_job, [(run,)])
        filtered = executor.map(_filter_job, [(run, i) for i in range(run.shards)])
        if sum(c.read for c in signed) != sum(c.read for c in filtered):
            raise StillError(f"{run.plan}: the inputs changed between sign and filter; run the plan again")
        if state is not None:
            stats.extra["state_representatives_added"] = commit_into(run.plan, state)
    finally:
        if state is not None:
            state.close(False)
    stats.read += sum(c.read for c in filtered)
    stats.written += sum(c.written for c in filtered)
    for counts in filtered:
        for reason, n in counts.dropped:
            stats.drop(reason, n)
        for kind, n in counts.errors:
            stats.error(kind, n)
