"""Benchmark `still dedup` against datasketch and rensa on one generated corpus, in one run.

    python bench/dedup.py [--docs 100000] [--words 250] [--dup-rate 0.1]

Every tool runs as its own process pinned to one core (taskset -c 0, RAYON_NUM_THREADS=1),
end to end from the same JSONL file; we report docs/s, the ratio to `still dedup`, peak RSS,
and the recall of planted near duplicates whose exact Jaccard similarity to their original is
at least 0.85 (threshold 0.8 + 0.05), plus drops of records that are not such duplicates.
Not a test: timings depend on the machine. rensa is optional (pip install rensa).

Then, on two cores (taskset -c 0,1): `still dedup --workers 1` vs `--workers 2`, the staged plan
(`still dedup plan`, the corpus as 2 files, each stage's jobs 2 at once; then the same as one
`still dedup plan run` with 2 local processes, and on a local Ray instance with 2 CPUs, its start
included; pip install ray) and, as its anchor,
datatrove's MinHash pipeline (local executor, 2 tasks; pip install datatrove spacy, bench only):
wall and CPU time, peak RSS, recall, false drops, and whether the kept set equals one process's.
`--scale-only` runs just that part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sample import WRAPPER  # noqa: E402  (bench/sample.py: peak RSS and CPU time of one fresh process)

NUM_PERM = 128
THRESHOLD = 0.8
NGRAM = 5


def _texts(path: str) -> tuple[list[str], list[str]]:
    import orjson

    ids, texts = [], []
    with open(path, "rb") as f:
        for line in f:
            d = orjson.loads(line)
            ids.append(d["id"])
            texts.append(" ".join(d["query"].lower().split()))
    return ids, texts


def _shingles(text: str) -> list[str]:
    toks = text.split()
    return [" ".join(toks[i : i + NGRAM]) for i in range(max(1, len(toks) - NGRAM + 1))]


def tool_datasketch_bulk(inp: str, out: str) -> None:
    """datasketch's fastest signature path: MinHash.bulk with an xxhash hash function."""
    import xxhash
    from datasketch import MinHash

    _, texts = _texts(inp)
    sets = [[s.encode() for s in _shingles(t)] for t in texts]
    MinHash.bulk(sets, num_perm=NUM_PERM, hashfunc=xxhash.xxh32_intdigest)
    Path(out).write_text("")


def tool_datasketch_lsh(inp: str, out: str) -> None:
    """datasketch end to end: bulk signatures, then MinHashLSH query + insert (keep first)."""
    import xxhash
    from datasketch import MinHash, MinHashLSH

    ids, texts = _texts(inp)
    sets = [[s.encode() for s in _shingles(t)] for t in texts]
    sigs = MinHash.bulk(sets, num_perm=NUM_PERM, hashfunc=xxhash.xxh32_intdigest)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    kept = []
    for i, m in zip(ids, sigs):
        if lsh.query(m):
            continue
        lsh.insert(i, m)
        kept.append(i)
    Path(out).write_text("\n".join(kept) + "\n")


def tool_rensa_sig(inp: str, out: str) -> None:
    """rensa's batch signature call (Rust), shingles built in Python as in its README."""
    from rensa import RMinHash

    _, texts = _texts(inp)
    RMinHash.digest_matrix_from_token_sets([_shingles(t) for t in texts], NUM_PERM, 42)
    Path(out).write_text("")


def tool_rensa_lsh(inp: str, out: str) -> None:
    """rensa's whole LSH pipeline: signatures, then insert-and-flag in one call (16 bands)."""
    from rensa import RMinHash, RMinHashLSH

    ids, texts = _texts(inp)
    matrix = RMinHash.digest_matrix_from_token_sets([_shingles(t) for t in texts], NUM_PERM, 42)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16)
    flags = lsh.insert_matrix_and_query_duplicate_flags(matrix, 0)
    # a flagged row shares a band with some other row; keep the first of each such pair as
    # rensa's README does (flags alone cannot tell which one came first, so keep unflagged + first)
    kept = [i for i, flag in zip(ids, flags) if not flag]
    Path(out).write_text("\n".join(kept) + "\n")


def tool_datatrove(inp: str, out: str) -> None:
    """datatrove's MinHash pipeline (signatures, buckets, cluster, filter), local executor with
    2 tasks and 2 workers per stage, its default 14 buckets x 8 hashes, 5-gram words."""
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.hashes import xxhash as dt_xxhash

    # datatrove 0.10 hashes str, which xxhash >= 4 refuses: encode first (same digests as xxhash 3)
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)  # type: ignore[assignment]
    dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)  # type: ignore[assignment]
    work = Path(out).parent / "datatrove"
    lines = Path(inp).read_bytes().splitlines(keepends=True)
    (work / "in").mkdir(parents=True, exist_ok=True)
    half = (len(lines) + 1) // 2
    (work / "in" / "part0.jsonl").write_bytes(b"".join(lines[:half]))
    (work / "in" / "part1.jsonl").write_bytes(b"".join(lines[half:]))
    config = MinhashConfig()

    def reader() -> JsonlReader:
        return JsonlReader(str(work / "in"), text_key="query", id_key="id")

    stages = [
        ([reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)], 2),
        (
            [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)],
            config.num_buckets,
        ),
        (
            [
                MinhashDedupCluster(
                    input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config
                )
            ],
            1,
        ),
        (
            [
                reader(),
                MinhashDedupFilter(input_folder=str(work / "remove")),
                JsonlWriter(str(work / "out"), compression=None),
            ],
            2,
        ),
    ]
    for k, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=2, logging_dir=str(work / f"logs{k}"), skip_completed=False
        ).run()
    kept = [json.loads(line)["id"] for f in sorted((work / "out").iterdir()) for line in open(f)]
    Path(out).write_text("\n".join(kept) + "\n")


TOOLS = {
    "datasketch-bulk (signatures only)": tool_datasketch_bulk,
    "datasketch bulk + MinHashLSH": tool_datasketch_lsh,
    "rensa (signatures only)": tool_rensa_sig,
    "rensa RMinHashLSH pipeline": tool_rensa_lsh,
    "datatrove MinHash pipeline": tool_datatrove,
}


def _start(cmd: list[str]) -> subprocess.Popen[str]:
    """Start a command through bench/sample.py's small wrapper process, which reports its peak RSS
    and CPU time: a child forked from this process (hundreds of MB after making the corpus)
    reports this process's size as its own peak."""
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *cmd], env=env, stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> tuple[float, float]:
    """Peak RSS (MB) and CPU seconds (user + system) of a command started by :func:`_start`: its
    own and its waited-for children's (`still dedup --workers N`'s workers are; the jobs of `plan
    run` are a forkserver's or Ray's, not counted)."""
    out, _ = proc.communicate()
    rc, _, cpu, rss_kb = out.split()  # the wrapper also times the command: timed here instead
    if int(rc) != 0:
        raise SystemExit(f"failed: {proc.args!r}")
    return int(rss_kb) / 1024, float(cpu)


def _run_usage(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds of a command (see :func:`_finish`)."""
    start = time.perf_counter()
    rss, cpu = _finish(_start(cmd))
    return time.perf_counter() - start, rss, cpu


def _run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    elapsed, rss, _ = _run_usage(cmd)
    return elapsed, rss


def _still(*args: str) -> list[str]:
    return [sys.executable, "-m", "still", "dedup", *args]


def scale_out(
    data: Path, work: Path, ids: list[str], reference: set[str], truth: tuple[set[str], set[str]], rounds: int = 3
) -> None:
    """`--workers 1` vs `2` on two cores, and the staged plan with 2 shards (the stages of each
    kind run 2 at once): wall time, peak RSS, and CPU time.

    `--workers 1` and `2` alternate for ``rounds`` rounds and the run of median wall time of each
    is reported, with every round's ratio: on a shared machine whose speed drifts by a third over
    minutes, one pair of runs says little."""
    cores = ["taskset", "-c", "0,1"] if shutil.which("taskset") else []
    rows: list[tuple[str, float, float, float, set[str]]] = []
    runs: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    for _ in range(max(1, rounds)):
        for workers in (1, 2):
            out = work / f"workers-{workers}.jsonl"
            out.unlink(missing_ok=True)  # untimed: replacing the last round's output frees its pages
            runs[workers].append(_run_usage(cores + _still("-q", "--workers", str(workers), str(data), "-o", str(out))))
    for workers in (1, 2):
        secs, rss, cpu = sorted(runs[workers])[len(runs[workers]) // 2]
        rows.append((f"--workers {workers}", secs, rss, cpu, _ids(work / f"workers-{workers}.jsonl")))
    ratios = [one[0] / two[0] for one, two in zip(runs[1], runs[2])]
    print(
        f"--workers 2 speed-up per round ({len(ratios)} rounds, alternating): "
        + ", ".join(f"{r:.2f}x" for r in ratios)
        + f"; of the median runs {rows[0][1] / rows[1][1]:.2f}x"
    )
    rows.append(staged(data, work, cores))
    parts = [str(p) for p in sorted(work.glob("part*.jsonl"))]  # the 2 files staged() wrote
    for executor in ("local", "ray"):
        if executor == "ray" and subprocess.run([sys.executable, "-c", "import ray"], capture_output=True).returncode:
            print("plan run --executor ray: skipped (pip install 'still[ray]')")
            continue
        out = work / f"run-{executor}"
        cmd = _still("plan", "run", "--executor", executor, "--jobs", "2", "--buckets", "2", "-o", str(out))
        secs, rss, cpu = _run_usage(cores + cmd + [str(work / f"plan-{executor}"), *parts])
        kept = set().union(*(_ids(path) for path in out.iterdir()))
        rows.append((f"plan run --executor {executor}", secs, rss, cpu, kept))
    if subprocess.run([sys.executable, "-c", "import datatrove"], capture_output=True).returncode == 0:
        out = work / "datatrove.txt"
        cmd = [sys.executable, __file__, "--tool", "datatrove MinHash pipeline", "--input", str(data)]
        secs, rss, cpu = _run_usage(cores + cmd + ["--output", str(out)])
        rows.append(("datatrove, 2 tasks (anchor)", secs, rss, cpu, set(out.read_text().split())))
    else:
        print("datatrove: skipped (pip install datatrove)")
    high, low = truth
    head = f"{'run':28s} {'wall s':>7s} {'docs/s':>8s} {'speed-up':>8s} {'peak RSS':>9s} {'CPU s':>7s}"
    print(f"\n{head} {'recall':>7s} {'false drops':>11s} {'= 1 process':>11s}")
    for name, secs, rss, cpu, kept in rows:
        speed = rows[0][1] / secs
        dropped = {i for i in ids if i not in kept}
        recall = len(high & dropped) / max(1, len(high))
        print(
            f"{name:28s} {secs:7.2f} {len(ids) / secs:8.0f} {speed:8.2f} {rss:8.0f}M {cpu:7.2f} {recall:7.4f} "
            f"{len(dropped & low):11d} {kept == reference!s:>11s}"
        )
    anchor = [r for r in rows if r[0].startswith("datatrove")]
    for name, secs, *_ in rows[2:] if anchor else []:
        if not name.startswith("datatrove"):
            print(f"datatrove's wall time / {name}'s: {anchor[0][1] / secs:.2f}x")
    share = rows[1][3] / rows[0][3]
    print(
        "(CPU s: --workers 2's of all its processes, its workers being its children; plan run's of "
        "the command's own process alone, its jobs being a forkserver's or Ray's.) --workers 2 "
        f"spent {share:.2f}x the CPU time of one process for the same work (docs/dedup.md has the breakdown)"
    )


def _ids(path: Path) -> set[str]:
    return {json.loads(line)["id"] for line in open(path)}


def staged(data: Path, work: Path, cores: list[str]) -> tuple[str, float, float, float, set[str]]:
    """The staged plan over 2 shards (the corpus split into 2 files), each stage's jobs 2 at once."""
    lines = data.read_bytes().splitlines(keepends=True)
    half = (len(lines) + 1) // 2
    parts = [work / "part0.jsonl", work / "part1.jsonl"]
    parts[0].write_bytes(b"".join(lines[:half]))
    parts[1].write_bytes(b"".join(lines[half:]))
    plan, out = str(work / "plan"), str(work / "plan-out")
    inputs = [str(p) for p in parts]
    stages = [
        [_still("plan", "sign", "--buckets", "2", "--shard", f"{i}/2", plan, *inputs) for i in range(2)],
        [_still("plan", "buckets", "--bucket", str(b), plan) for b in range(2)],
        [_still("plan", "edges", "--bucket", str(b), plan) for b in range(2)],
        [_still("plan", "clusters", plan)],
        [_still("plan", "filter", "--shard", f"{i}/2", "-o", out, plan, *inputs) for i in range(2)],
    ]
    start = time.perf_counter()
    peak, cpu = 0.0, 0.0
    for jobs in stages:
        procs = [_start(cores + cmd) for cmd in jobs]
        for proc in procs:
            rss, used = _finish(proc)
            peak, cpu = max(peak, rss), cpu + used
    secs = time.perf_counter() - start
    kept: set[str] = set()
    for path in Path(out).iterdir():
        kept |= _ids(path)
    return "plan, 2 shards x 2 at once", secs, peak, cpu, kept


def _pin() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def ground_truth(path: str) -> tuple[set[str], set[str]]:
    """(planted duplicates with J >= threshold + 0.05 to their original, records that are not
    duplicates at the threshold: originals and planted copies with J < threshold)."""
    import orjson

    docs = [orjson.loads(line) for line in open(path, "rb")]
    high = set()
    low = {d["id"] for d in docs if "copy_of" not in d}

    def shingle_set(text: str) -> set[tuple[str, ...]]:
        toks = " ".join(text.lower().split()).split()
        return {tuple(toks[i : i + NGRAM]) for i in range(len(toks) - NGRAM + 1)}

    for d in docs:
        if "copy_of" not in d:
            continue
        a, b = shingle_set(d["query"]), shingle_set(docs[d["copy_of"]]["query"])
        j = len(a & b) / max(1, len(a | b))
        if j >= THRESHOLD + 0.05:
            high.add(d["id"])
        elif j < THRESHOLD:
            low.add(d["id"])
    return high, low


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=250)
    ap.add_argument("--dup-rate", type=float, default=0.1)
    ap.add_argument("--scale-only", action="store_true", help="only still dedup: --workers 1 vs 2, staged plan")
    ap.add_argument("--rounds", type=int, default=3, help="alternating --workers 1 / 2 runs (median reported)")
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tool:
        TOOLS[args.tool](args.input, args.output)
        return

    import corpus

    work = Path(tempfile.mkdtemp(prefix="still-bench-dedup-"))
    try:
        data = work / "corpus.jsonl"
        corpus.write(str(data), args.docs, words=args.words, dup_rate=args.dup_rate, seed=0)
        ids = [json.loads(line)["id"] for line in open(data)]
        high, low = ground_truth(str(data))
        size_mb = data.stat().st_size / 1e6
        print(
            f"corpus: {args.docs} docs of ~{args.words} words ({size_mb:.0f} MB), {len(high)} planted near "
            f"duplicates with J >= {THRESHOLD + 0.05:.2f}; one core each (taskset -c 0)\n"
        )
        results = []
        still = [sys.executable, "-m", "still", "dedup", "-q", "--stats", str(work / "stats.json")]
        secs, rss = _run(_pin() + still + [str(data), "-o", str(work / "still.jsonl")])
        kept = {json.loads(line)["id"] for line in open(work / "still.jsonl")}
        stats = json.loads((work / "stats.json").read_text())
        results.append(("still dedup (end to end)", secs, rss, kept))
        scale_out(data, work, ids, kept, (high, low), args.rounds)
        if args.scale_only:
            return
        have_rensa = subprocess.run([sys.executable, "-c", "import rensa"], capture_output=True).returncode == 0
        for name in TOOLS:
            if name.startswith("rensa") and not have_rensa:
                print(f"{name}: skipped (pip install rensa)")
                continue
            out = work / "out.txt"
            secs, rss = _run(
                _pin() + [sys.executable, __file__, "--tool", name, "--input", str(data), "--output", str(out)]
            )
            kept_ids = set(out.read_text().split()) if out.read_text().strip() else None
            results.append((name, secs, rss, kept_ids))
        base = args.docs / results[0][1]
        print(f"{'tool':38s} {'docs/s':>9s} {'still/x':>8s} {'peak RSS':>9s} {'recall':>7s} {'false drops':>11s}")
        print(
            "(recall: planted duplicates with J >= 0.85 dropped; false drops: records with J < 0.8 to every"
            " earlier one dropped; rensa's flags mark both records of a pair)"
        )
        for name, secs, rss, kept_ids in results:
            rate = args.docs / secs
            if kept_ids is None:
                recall, false = "-", "-"
            else:
                dropped = {i for i in ids if i not in kept_ids}
                recall = f"{len(high & dropped) / max(1, len(high)):.4f}"
                false = str(len(dropped & low))
            print(f"{name:38s} {rate:9.0f} {base / rate:8.2f} {rss:8.0f}M {recall:>7s} {false:>11s}")
        per_million = stats["index_bytes"] / args.docs * 1e6 / 1e6
        print(
            f"\nstill dedup index memory: {stats['index_bytes'] / 1e6:.1f} MB for {args.docs} docs "
            f"= {per_million:.0f} MB per million documents (shingle sets on disk); LSH {stats['lsh']}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
