"""The staged plan with --state: runs in sequence keep what `still dedup --state` keeps, and
leave the same state directory; a failed run leaves the state as it was."""

from __future__ import annotations

import fcntl
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_still

from still.core.dedup import DedupConfig, dedup
from still.core.dedup_executor import LocalExecutor, PlanRun, run_plan
from still.core.dedup_plan import PlanParams, Shard, candidate_pairs, replay_clusters, verify_edges
from still.core.dedup_plan_inputs import filter_shard, sign
from still.core.dedup_plan_state import commit, snapshot_state
from still.core.errors import StillError
from still.core.jsonl import read_records
from still.core.stats import RunStats

sys.path.insert(0, str(ROOT / "bench"))
import corpus  # noqa: E402


def _runs(tmp_path: Path, files: tuple[int, ...] = (3, 2, 4), n: int = 900, seed: int = 11) -> list[list[str]]:
    """Input files of consecutive runs: near duplicates of earlier runs' records (the corpus
    plants them close after their originals, so many cross a run boundary), exact copies of
    earlier runs' and of the same run's records, and three responses per query (with --key
    query a copy with the same response is a repeated record, another response a new sample)."""
    rng = random.Random(seed)
    docs = list(corpus.documents(n, words=30, dup_rate=0.35, seed=seed))
    lines = [
        json.dumps({"id": d["id"], "query": d["query"], "response": f"r{i % 3}"}) + "\n" for i, d in enumerate(docs)
    ]
    chunk = len(lines) // len(files)
    runs: list[list[str]] = []
    earlier: list[str] = []
    for r, count in enumerate(files):
        mine = lines[r * chunk : (r + 1) * chunk]
        mine += [rng.choice(mine) for _ in range(15)]  # copies within the run
        mine += [rng.choice(earlier) for _ in range(25 if earlier else 0)]  # copies of earlier runs
        earlier += mine
        rng.shuffle(mine)
        paths = [tmp_path / f"run{r}-part{k}.jsonl" for k in range(count)]
        for k, path in enumerate(paths):
            path.write_text("".join(mine[k::count]))
        runs.append([str(p) for p in paths])
    return runs


def _one_process(paths: list[str], config: DedupConfig) -> list[bytes]:
    """`still dedup --state` over ``paths``: the kept records (the state saved after them)."""
    stats = RunStats("dedup")
    pending: list[Callable[[], None]] = []
    kept = [r.to_bytes() for r in dedup(read_records(paths, stats), config, stats, pending)]
    for save in pending:
        save()
    return kept


def _outputs(out: Path) -> list[bytes]:
    return [line for p in sorted(out.iterdir()) for line in p.read_bytes().splitlines(keepends=True)]


def _stages(plan: Path, paths: list[str], shards: int, params: PlanParams, out: Path) -> None:
    """Every stage as separate jobs would run it, up to (not including) commit."""
    if params.state_dir:
        snapshot_state(str(plan), params)  # what `plan sign --shard 0/N --state DIR` does first
    for i in range(shards):
        sign(str(plan), paths, Shard(i, shards), params, RunStats("dedup plan sign"))
    for b in range(params.buckets):
        candidate_pairs(str(plan), b)
        verify_edges(str(plan), b)
    replay_clusters(str(plan))
    for i in range(shards):
        filter_shard(str(plan), paths, Shard(i, shards), str(out), RunStats("dedup plan filter"))


def state_arrays(state: Path) -> dict[str, object]:
    """Everything a state directory holds (arrays and the shingle words they index)."""
    manifest = json.loads((state / "manifest.json").read_text())
    with np.load(state / manifest["arrays"]) as data:
        arrays = {k: data[k].tolist() for k in data.files}
    shingles = (state / "shingles.bin").read_bytes()[: 8 * arrays["offsets"][-1]]
    return {
        "params": manifest["params"],
        "representatives": manifest["representatives"],
        **arrays,
        "shingles": shingles,
    }


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_staged_runs_with_state_keep_what_one_process_keeps(tmp_path: Path, shards: int) -> None:
    runs = _runs(tmp_path)
    one = DedupConfig(block_size=97, state_dir=str(tmp_path / "one-state"))
    staged = PlanParams(DedupConfig(block_size=97, state_dir=str(tmp_path / "staged-state")), buckets=3)
    everything: list[bytes] = []
    for r, paths in enumerate(runs):
        expected = _one_process(paths, one)
        out = tmp_path / f"out{r}"
        _stages(tmp_path / f"plan{r}", paths, shards, staged, out)
        commit(str(tmp_path / f"plan{r}"), wait=False)
        assert _outputs(out) == expected, f"run {r}"
        # the same state directory: representatives, keys, bands, member counts, shingle sets
        assert state_arrays(tmp_path / "staged-state") == state_arrays(tmp_path / "one-state"), f"run {r}"
        everything += expected
    # and the runs together keep what one run over the union keeps (earlier runs first)
    assert everything == _one_process([p for paths in runs for p in paths], DedupConfig(block_size=97))
    total = sum(1 for paths in runs for p in paths for _ in open(p))
    assert len(everything) < total - 200  # duplicates were planted within and across runs
    assert json.loads((tmp_path / "staged-state" / "manifest.json").read_text())["generation"] == len(runs)


def test_runs_may_alternate_between_one_process_and_the_plan(tmp_path: Path) -> None:
    runs = _runs(tmp_path, files=(2, 2, 2), n=600, seed=5)
    shared = tmp_path / "shared"
    alone = DedupConfig(block_size=64, state_dir=str(tmp_path / "alone"))
    for r, paths in enumerate(runs):
        expected = _one_process(paths, alone)
        if r == 1:  # the middle run is staged, the others one process, all on one state
            params = PlanParams(DedupConfig(state_dir=str(shared)), buckets=2)
            _stages(tmp_path / "plan", paths, 2, params, tmp_path / "out")
            commit(str(tmp_path / "plan"), wait=False)
            got = _outputs(tmp_path / "out")
        else:
            got = _one_process(paths, DedupConfig(block_size=64, state_dir=str(shared)))
        assert got == expected, f"run {r}"
    assert state_arrays(shared) == state_arrays(tmp_path / "alone")


def test_exact_only_and_response_key_with_state(tmp_path: Path) -> None:
    runs = _runs(tmp_path, files=(2, 1), n=400, seed=3)
    for name, options in (("exact", {"near": False}), ("response", {"key": "response", "threshold": 0.7})):
        one = DedupConfig(state_dir=str(tmp_path / f"{name}-one"), **options)  # type: ignore[arg-type]
        params = PlanParams(DedupConfig(state_dir=str(tmp_path / f"{name}-staged"), **options), 2)  # type: ignore[arg-type]
        for r, paths in enumerate(runs):
            expected = _one_process(paths, one)
            out = tmp_path / f"{name}-out{r}"
            _stages(tmp_path / f"{name}-plan{r}", paths, 2, params, out)
            commit(str(tmp_path / f"{name}-plan{r}"), wait=False)
            assert _outputs(out) == expected, (name, r)
        assert state_arrays(tmp_path / f"{name}-staged") == state_arrays(tmp_path / f"{name}-one")


def _files(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.name != "lock"}


def test_a_failed_filter_leaves_the_state_and_the_rerun_gives_the_same_answer(tmp_path: Path) -> None:
    first, second = _runs(tmp_path, files=(2, 2), n=500, seed=8)
    state = tmp_path / "state"
    params = PlanParams(DedupConfig(state_dir=str(state)), buckets=2)
    _stages(tmp_path / "plan0", first, 2, params, tmp_path / "out0")
    commit(str(tmp_path / "plan0"), wait=False)
    before = _files(state)
    _one_process(first, DedupConfig(state_dir=str(tmp_path / "reference")))
    expected = _one_process(second, DedupConfig(state_dir=str(tmp_path / "reference")))

    plan = tmp_path / "plan1"
    snapshot_state(str(plan), params)
    for i in range(2):
        sign(str(plan), second, Shard(i, 2), params, RunStats("sign"))
    for b in range(2):
        candidate_pairs(str(plan), b)
        verify_edges(str(plan), b)
    replay_clusters(str(plan))
    filter_shard(str(plan), second, Shard(0, 2), str(tmp_path / "out1"), RunStats("filter"))
    # the second filter job fails: its input changed after sign
    original = Path(second[1]).read_bytes()
    Path(second[1]).write_bytes(original + b'{"query": "a line sign never saw"}\n')
    with pytest.raises(StillError, match="sign again"):
        filter_shard(str(plan), second, Shard(1, 2), str(tmp_path / "out1"), RunStats("filter"))
    with pytest.raises(StillError, match=r"input files \[1\] are not filtered"):
        commit(str(plan), wait=False)
    assert _files(state) == before
    # the input restored, the failed job run again: the answer of one process, then committed
    Path(second[1]).write_bytes(original)
    filter_shard(str(plan), second, Shard(1, 2), str(tmp_path / "out1"), RunStats("filter"))
    assert commit(str(plan), wait=False) > 0
    assert _outputs(tmp_path / "out1") == expected
    assert state_arrays(state) == state_arrays(tmp_path / "reference")
    after = _files(state)
    assert commit(str(plan), wait=False) == 0  # a commit run again changes nothing
    assert _files(state) == after


def test_a_plan_run_that_fails_leaves_the_state_and_reruns(tmp_path: Path) -> None:
    first, second = _runs(tmp_path, files=(2, 3), n=500, seed=9)
    state = tmp_path / "state"
    params = PlanParams(DedupConfig(block_size=50, state_dir=str(state)), buckets=2)
    executor = LocalExecutor(1)
    run_plan(PlanRun(str(tmp_path / "p0"), tuple(first), 2, params, str(tmp_path / "o0")), executor, RunStats("r"))
    before = _files(state)
    out = tmp_path / "o1"
    (out / f"00002-{Path(second[2]).name}").mkdir(parents=True)  # the last output cannot be written
    run = PlanRun(str(tmp_path / "p1"), tuple(second), 2, params, str(out))
    with pytest.raises(OSError):
        run_plan(run, executor, RunStats("r"))
    assert _files(state) == before
    (out / f"00002-{Path(second[2]).name}").rmdir()
    stats = RunStats("r")
    run_plan(run, executor, stats)  # the same plan directory, run again
    stats.check_balance()
    reference = DedupConfig(state_dir=str(tmp_path / "reference"))
    _one_process(first, reference)
    assert _outputs(out) == _one_process(second, reference)
    assert state_arrays(state) == state_arrays(tmp_path / "reference")


def test_another_commit_in_between_is_refused(tmp_path: Path) -> None:
    first, second = _runs(tmp_path, files=(1, 1), n=300, seed=2)
    state = tmp_path / "state"
    params = PlanParams(DedupConfig(state_dir=str(state)), buckets=2)
    _stages(tmp_path / "plan", second, 1, params, tmp_path / "out")
    _one_process(first, DedupConfig(state_dir=str(state)))  # commits while the plan is under way
    before = _files(state)
    with pytest.raises(StillError, match="changed since this plan read it"):
        commit(str(tmp_path / "plan"), wait=False)
    assert _files(state) == before


def test_cli_plan_run_with_state_and_a_held_or_mismatched_state(tmp_path: Path) -> None:
    runs = _runs(tmp_path, files=(3, 2), n=400, seed=4)
    plan, one, staged = str(tmp_path / "plan"), str(tmp_path / "one"), str(tmp_path / "staged")
    for r, paths in enumerate(runs):
        expected = run_still(["dedup", "--state", one, *paths]).stdout
        out = tmp_path / f"out{r}"
        # the same plan directory every run (the second has fewer inputs than the first)
        res = run_still(
            ["dedup", "plan", "run", "--jobs", "2", "--buckets", "2", "--state", staged, "-o", str(out), plan, *paths]
        )
        assert b"".join(p.read_bytes() for p in sorted(out.iterdir())) == expected, res.stderr
    assert state_arrays(Path(staged)) == state_arrays(Path(one))
    paths = runs[1]
    # another run holds the state: exit 1, naming --wait
    fd = os.open(os.path.join(staged, "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for args in (["run", "-o", str(tmp_path / "o")], ["sign", "--shard", "0/1"]):
            res = run_still(["dedup", "plan", *args, "--state", staged, str(tmp_path / "p2"), *paths], code=1)
            assert "another still dedup run is using this --state directory" in res.stderr, res.stderr
    finally:
        os.close(fd)
    # other parameters than the state was built with: refused, the differences named
    res = run_still(
        ["dedup", "plan", "sign", "--shard", "0/1", "--threshold", "0.7", "--state", staged, plan, *paths], code=1
    )
    assert "other parameters" in res.stderr and "threshold" in res.stderr and "Traceback" not in res.stderr
    # shards given different states (or none) do not make one plan
    p3 = str(tmp_path / "p3")
    run_still(["dedup", "plan", "sign", "--shard", "0/2", "--state", staged, p3, *paths])
    run_still(["dedup", "plan", "sign", "--shard", "1/2", p3, *paths])
    res = run_still(["dedup", "plan", "buckets", p3], code=1)
    assert "different parameters" in res.stderr
    res = run_still(["dedup", "plan", "commit", str(tmp_path / "p0-none")], code=1)
    assert "nothing signed" in res.stderr


def test_cli_stages_with_state_then_commit(tmp_path: Path) -> None:
    runs = _runs(tmp_path, files=(2, 2), n=400, seed=12)
    one, staged = str(tmp_path / "one"), str(tmp_path / "staged")
    for r, paths in enumerate(runs):
        expected = run_still(["dedup", "--state", one, *paths]).stdout
        plan, out = str(tmp_path / f"plan{r}"), str(tmp_path / f"out{r}")
        for i in range(2):
            run_still(["dedup", "plan", "sign", "--shard", f"{i}/2", "--buckets", "2", "--state", staged, plan, *paths])
        for stage in ("buckets", "edges", "clusters"):
            run_still(["dedup", "plan", stage, plan])
        run_still(["dedup", "plan", "filter", "--shard", "0/2", "-o", out, plan, *paths])
        res = run_still(["dedup", "plan", "commit", plan], code=1)
        assert "input files [1] are not filtered" in res.stderr and "Traceback" not in res.stderr
        run_still(["dedup", "plan", "filter", "--shard", "1/2", "-o", out, plan, *paths])
        res = run_still(["dedup", "plan", "commit", plan])
        assert "new representatives" in res.stderr
        assert b"".join(p.read_bytes() for p in sorted(Path(out).iterdir())) == expected
    assert state_arrays(Path(staged)) == state_arrays(Path(one))
