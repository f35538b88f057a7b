"""Benchmark: `still sample` against a pandas group-by-and-sample script doing the same selection.

Both run on the same generated JSONL (rows of ~4 KB, four responses per query, denormalised
`domain`, `difficulty`, `grade.r1.{pass_rate,cv}`, `verify.score`, `n_tokens`), select
"pass rate in 0.25..0.75, one random response per query, then domain quotas", and are timed
as separate processes; peak RSS comes from getrusage(RUSAGE_CHILDREN) of a fresh wrapper.

    python bench/sample.py                 # 200k rows (what fits a shared 2-core box)
    python bench/sample.py --rows 1000000  # the issue's 1M rows (~4 GB of JSONL)

pandas is not a dependency of still; install it in your venv for this script only:
    .venv/bin/pip install pandas
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

DOMAINS = [("math", 0.4), ("code", 0.3), ("science", 0.2), ("other", 0.1)]
QUOTA = {"math": 0.04, "code": 0.03, "science": 0.02, "other": 0.01}  # fractions of --rows

PANDAS_SCRIPT = r"""
import sys, pandas as pd
path, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
quota = {q.split(":")[0]: int(q.split(":")[1]) for q in sys.argv[4].split(",")}
df = pd.read_json(path, lines=True)
pr = df["grade"].map(lambda g: g["r1"]["pass_rate"])
df = df[(pr >= 0.25) & (pr <= 0.75)]
df = df.groupby("id", group_keys=False).sample(n=1, random_state=seed)
parts = []
for dom, n in quota.items():
    g = df[df["domain"] == dom]
    parts.append(g.sample(n=min(n, len(g)), random_state=seed))
pd.concat(parts).to_json(out, orient="records", lines=True, force_ascii=False)
"""

WRAPPER = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, dt, ru.ru_utime + ru.ru_stime, ru.ru_maxrss)
"""


def generate(path: str, rows: int, seed: int, row_bytes: int = 4000) -> int:
    """Write ``rows`` JSONL lines of about ``row_bytes`` each; returns the file size."""
    rng = random.Random(seed)
    words = "the of and to in is that for it as with was on be by this are we from at".split()
    pool = " ".join(rng.choice(words) for _ in range(row_bytes * 2))
    with open(path, "w", encoding="utf-8") as out:
        q = 0
        domain = "math"
        pass_rate = 0.5
        for i in range(rows):
            if i % 4 == 0:
                q += 1
                domain = rng.choices([d for d, _ in DOMAINS], [w for _, w in DOMAINS])[0]
                pass_rate = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
                difficulty = f"L{rng.randint(1, 5)}"
            start = rng.randrange(len(pool) - row_bytes)
            n_tokens = rng.randint(200, 8000)
            rec = {
                "id": f"q{q}",
                "query": f"Problem {q}: compute something about {q * 7919 % 1000}.",
                "response": pool[start : start + row_bytes - 450],
                "domain": domain,
                "difficulty": difficulty,
                "model": "r1",
                "sample_idx": i % 4,
                "n_tokens": n_tokens,
                "verify": {"verdict": "correct", "score": 1.0, "extracted": "42", "method": "math", "reason": ""},
                "grade": {"r1": {"pass_rate": pass_rate, "mean_score": pass_rate, "cv": 0.5, "n": 4, "n_truncated": 0}},
            }
            out.write(json.dumps(rec) + "\n")
    return os.path.getsize(path)


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+sys) and peak RSS in MiB of one command."""
    res = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True)
    rc, dt, cpu, rss = res.stdout.split()
    if rc != "0":
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return float(dt), float(cpu), int(rss) // 1024  # MiB (Linux reports KiB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="Keep the generated data and outputs here.")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="still-bench-sample-")
    os.makedirs(tmp, exist_ok=True)
    data = os.path.join(tmp, "rows.jsonl")
    size = generate(data, args.rows, args.seed)
    quota = ",".join(f"{d}:{int(f * args.rows)}" for d, f in QUOTA.items())
    print(f"rows {args.rows}, {size / args.rows:.0f} B/row, {size / 2**20:.0f} MiB; quota {quota}")

    still_cmd = [
        sys.executable,
        "-m",
        "still",
        "sample",
        "-q",
        "--pass-rate",
        "0.25..0.75",
        "--per-query",
        "1",
        "--quota",
        f"domain={quota}",
        "--seed",
        str(args.seed),
        data,
        "-o",
        os.path.join(tmp, "still.jsonl"),
    ]
    # one core: the still process is single-threaded; taskset pins it where available
    if os.path.exists("/usr/bin/taskset"):
        still_cmd = ["taskset", "-c", "0", *still_cmd]
    t_still, cpu_still, rss_still = timed(still_cmd)
    print(
        f"still sample : {t_still:7.2f} s  {args.rows / t_still:9,.0f} rows/s wall  "
        f"{args.rows / cpu_still:9,.0f} rows/CPU-s  peak RSS {rss_still} MiB"
    )

    try:
        import pandas  # noqa: F401
    except ImportError:
        print("pandas      : not installed (.venv/bin/pip install pandas) - skipped")
        return
    pandas_cmd = [sys.executable, "-c", PANDAS_SCRIPT, data, os.path.join(tmp, "pandas.jsonl"), str(args.seed), quota]
    t_pd, cpu_pd, rss_pd = timed(pandas_cmd)
    print(
        f"pandas       : {t_pd:7.2f} s  {args.rows / t_pd:9,.0f} rows/s wall  "
        f"{args.rows / cpu_pd:9,.0f} rows/CPU-s  peak RSS {rss_pd} MiB"
    )
    print(
        f"ratio        : still is {t_pd / t_still:.2f}x faster (wall), {cpu_pd / cpu_still:.2f}x less CPU, "
        f"{rss_pd / max(rss_still, 1):.1f}x less memory"
    )
    n_still = sum(1 for _ in open(os.path.join(tmp, "still.jsonl"), "rb"))
    n_pd = sum(1 for _ in open(os.path.join(tmp, "pandas.jsonl"), "rb"))
    print(f"selected     : still {n_still}, pandas {n_pd} (same quotas; different random draws)")
    if not args.keep:
        for name in ("rows.jsonl", "still.jsonl", "pandas.jsonl"):
            p = os.path.join(tmp, name)
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
