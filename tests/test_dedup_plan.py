"""The staged MinHash plan keeps exactly what one `still dedup` process keeps."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_still
from test_dedup_plan_state import state_arrays

from still.core.dedup import DedupConfig, dedup
from still.core.dedup_executor import LocalExecutor, PlanRun, RayExecutor, run_plan
from still.core.dedup_plan import PlanParams, Shard, candidate_pairs, replay_clusters, verify_edges
from still.core.dedup_plan_inputs import filter_shard, sign
from still.core.jsonl import read_records
from still.core.stats import RunStats

sys.path.insert(0, str(ROOT / "bench"))
import corpus  # noqa: E402


def _inputs(tmp_path: Path, files: int = 4, n: int = 1200, seed: int = 7) -> list[str]:
    """Planted near duplicates spread over files (copies land in other files), exact copies,
    short and empty texts."""
    rng = random.Random(seed)
    docs = list(corpus.documents(n, words=30, dup_rate=0.35, seed=seed))
    lines = [json.dumps({"id": d["id"], "query": d["query"]}) + "\n" for d in docs]
    lines += [json.dumps({"id": f"short{i}", "query": q}) + "\n" for i, q in enumerate(["", " ", "a b", "a  b", "x"])]
    lines += [rng.choice(lines) for _ in range(40)]  # exact copies
    rng.shuffle(lines)
    paths = []
    for k in range(files):
        path = tmp_path / f"part{k}.jsonl"
        path.write_text("".join(lines[k::files]))
        paths.append(str(path))
    return paths


def _one_process(paths: list[str], config: DedupConfig) -> list[bytes]:
    stats = RunStats("dedup")
    return [r.to_bytes() for r in dedup(read_records(paths, stats), config, stats)]


def _staged(plan: Path, paths: list[str], shards: int, config: DedupConfig, buckets: int) -> list[bytes]:
    params = PlanParams(config, buckets)
    for i in range(shards):
        sign(str(plan), paths, Shard(i, shards), params, RunStats("dedup plan sign"))
    for b in range(buckets):
        candidate_pairs(str(plan), b)
        verify_edges(str(plan), b)
    replay_clusters(str(plan))
    out: list[Path] = []
    for i in range(shards):
        out += map(Path, filter_shard(str(plan), paths, Shard(i, shards), str(plan / "out"), RunStats("f")))
    return [line for p in sorted(out) for line in p.read_bytes().splitlines(keepends=True)]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_staged_plan_keeps_what_one_process_keeps(tmp_path: Path, shards: int) -> None:
    paths = _inputs(tmp_path)
    config = DedupConfig(block_size=97)
    expected = _one_process(paths, config)
    total = sum(1 for p in paths for _ in open(p))
    assert 0 < len(expected) < total - 150  # the corpus has many duplicates
    assert _staged(tmp_path / "plan", paths, shards, config, buckets=3) == expected


def test_staged_plan_exact_only_and_other_normalisation(tmp_path: Path) -> None:
    paths = _inputs(tmp_path, files=3, n=400, seed=2)
    for config in (DedupConfig(near=False), DedupConfig(normalise=("lower",), threshold=0.7)):
        expected = _one_process(paths, config)
        plan = tmp_path / f"plan-{config.near}"
        assert _staged(plan, paths, 2, config, buckets=2) == expected


def test_cli_plan_stages_rerun_and_default_command(tmp_path: Path) -> None:
    paths = _inputs(tmp_path, files=2, n=300, seed=4)
    plan, out = str(tmp_path / "plan"), str(tmp_path / "out")
    expected = run_still(["dedup", *paths]).stdout
    for i in range(2):
        run_still(["dedup", "plan", "sign", "--shard", f"{i}/2", "--buckets", "2", plan, *paths])
    res = run_still(["dedup", "plan", "buckets", plan], code=None)
    assert res.code == 0, res.stderr
    run_still(["dedup", "plan", "edges", plan, "--bucket", "0"])
    res = run_still(["dedup", "plan", "clusters", plan], code=1)  # bucket 1 has no edges yet
    assert "run still dedup plan edges first" in res.stderr and "Traceback" not in res.stderr
    run_still(["dedup", "plan", "edges", plan, "--bucket", "1"])
    run_still(["dedup", "plan", "edges", plan])  # a rerun is safe
    run_still(["dedup", "plan", "clusters", plan])
    for i in range(2):
        run_still(["dedup", "plan", "filter", "--shard", f"{i}/2", "-o", out, plan, *paths])
    staged = b"".join(p.read_bytes() for p in sorted(Path(out).iterdir()))
    assert staged == expected
    # `still dedup FILE` still works, and a file named like a subcommand is reachable with `run`
    named = tmp_path / "plan.jsonl"
    named.write_bytes(Path(paths[0]).read_bytes())
    assert run_still(["dedup", str(named)]).stdout == run_still(["dedup", "run", paths[0]]).stdout
    res = run_still(["dedup", "plan", "filter", "--shard", "0/1", "-o", out, plan, *reversed(paths)], code=2)
    assert "same order" in res.stderr


def _run_whole_plan(
    tmp_path: Path, paths: list[str], shards: int, executor: object, name: str, state: Path | None = None
) -> list[bytes]:
    plan, out = tmp_path / f"plan-{name}", tmp_path / f"out-{name}"
    config = DedupConfig(block_size=97, state_dir=str(state) if state else None)
    run = PlanRun(str(plan), tuple(paths), shards, PlanParams(config, 3), str(out))
    stats = RunStats("dedup plan run")
    run_plan(run, executor, stats)  # type: ignore[arg-type]
    stats.check_balance()
    return [line for p in sorted(out.iterdir()) for line in p.read_bytes().splitlines(keepends=True)]


def test_whole_plan_in_local_processes_keeps_what_one_process_keeps(tmp_path: Path) -> None:
    paths = _inputs(tmp_path, n=600)
    expected = _one_process(paths, DedupConfig(block_size=97))
    executor = LocalExecutor(2)
    try:
        for shards in (1, 2, 4):
            assert _run_whole_plan(tmp_path, paths, shards, executor, f"local{shards}") == expected
    finally:
        executor.close()


@pytest.mark.slow
def test_whole_plan_on_ray_keeps_what_one_process_keeps(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'still[ray]'")
    paths = _inputs(tmp_path, n=600)
    expected = _one_process(paths, DedupConfig(block_size=97))
    executor = RayExecutor(None, 2)  # a local Ray instance with 2 CPUs, stopped by close()
    try:
        for shards in (1, 2, 4):
            assert _run_whole_plan(tmp_path, paths, shards, executor, f"ray{shards}") == expected
        # two runs with --state: what one process keeps in the same two runs, the same state
        for r, part in enumerate((paths[:2], paths[2:])):
            one = _one_process(part, DedupConfig(block_size=97, state_dir=str(tmp_path / "one-state")))
            assert _run_whole_plan(tmp_path, part, 2, executor, f"ray-state{r}", tmp_path / "state") == one
        assert state_arrays(tmp_path / "state") == state_arrays(tmp_path / "one-state")
    finally:
        executor.close()


def test_cli_plan_run_and_a_missing_ray(tmp_path: Path) -> None:
    paths = _inputs(tmp_path, files=2, n=300, seed=4)
    out = tmp_path / "out"
    expected = run_still(["dedup", *paths]).stdout
    res = run_still(
        ["dedup", "plan", "run", "--jobs", "2", "--buckets", "2", "-o", str(out), str(tmp_path / "p"), *paths]
    )
    assert b"".join(p.read_bytes() for p in sorted(out.iterdir())) == expected
    assert "dropped" in res.stderr
    # without Ray installed, --executor ray says how to get it (no traceback)
    blocker = tmp_path / "noray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    res = run_still(
        ["dedup", "plan", "run", "--executor", "ray", "-o", str(out), str(tmp_path / "p2"), *paths],
        code=2,
        env={"PYTHONPATH": str(blocker)},
    )
    assert "still[ray]" in res.stderr and "Traceback" not in res.stderr


def _with_fields(tmp_path: Path) -> list[str]:
    """Queries under `q` (near duplicates among them), responses under `response` (other near
    duplicates), and records the reader or the key text rejects: a malformed line, a record
    without a query or a response, one with a line over 1 KiB."""
    docs = list(corpus.documents(300, words=30, dup_rate=0.35, seed=6))
    rng = random.Random(6)
    answers = [d["query"] for d in docs]
    rng.shuffle(answers)
    lines = [json.dumps({"id": d["id"], "q": d["query"], "response": a}) + "\n" for d, a in zip(docs, answers)]
    bad = ['{"id": "broken", "q": \n', json.dumps({"id": "no-q", "other": "x y"}) + "\n"]
    bad.append(json.dumps({"id": "long", "q": "word " * 400, "response": "z"}) + "\n")
    paths = [tmp_path / f"fields{k}.jsonl" for k in range(3)]
    for k, path in enumerate(paths):
        path.write_text("".join(lines[k::3]) + bad[k])
    return [str(p) for p in paths]


@pytest.mark.parametrize(
    "options",
    [
        ["--query-field", "q"],
        ["--key", "response", "--query-field", "q", "--threshold", "0.7"],
    ],
)
def test_plan_reads_fields_and_bad_records_as_still_dedup_does(tmp_path: Path, options: list[str]) -> None:
    paths = _with_fields(tmp_path)
    reading = ["--on-error", f"quarantine={tmp_path / 'bad-one.jsonl'}", "--max-line-mb", "0.001"]
    one = run_still(["dedup", *options, *reading, *paths])
    out = tmp_path / "out"
    reading[1] = f"quarantine={tmp_path / 'bad-plan.jsonl'}"
    res = run_still(
        [
            "dedup",
            "plan",
            "run",
            "--jobs",
            "2",
            "--buckets",
            "2",
            *options,
            *reading,
            "-o",
            str(out),
            str(tmp_path / "p"),
            *paths,
        ]
    )
    assert b"".join(p.read_bytes() for p in sorted(out.iterdir())) == one.stdout
    assert 0 < one.stdout.count(b"\n") < 300 - 20  # the key's duplicates were dropped
    # the same bad records, counted and quarantined (the plan's in input order; still dedup's in
    # the order it meets them: the reader's own rejects come before a block's key-text rejects)
    assert "errors 3" in res.stderr and "errors 3" in one.stderr, res.stderr
    quarantined = (tmp_path / "bad-plan.jsonl").read_bytes().splitlines()
    assert sorted(quarantined) == sorted((tmp_path / "bad-one.jsonl").read_bytes().splitlines())
    assert [line[:13] for line in quarantined] == [b'{"id": "broke', b'{"id": "no-q"', b'{"id": "long"']


def test_plan_sign_fails_on_a_bad_record_by_default(tmp_path: Path) -> None:
    paths = _with_fields(tmp_path)
    res = run_still(
        ["dedup", "plan", "sign", "--shard", "1/3", "--query-field", "q", str(tmp_path / "p"), *paths], code=3
    )
    assert f"{paths[1]}:" in res.stderr and "--on-error" in res.stderr and "Traceback" not in res.stderr
    # the stages' own outputs: nothing half-written for the failed file
    assert not (tmp_path / "p" / "sign" / "f00001").exists()
