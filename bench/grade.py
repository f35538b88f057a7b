"""Benchmark: `still grade` against the in-memory script a user would write for the same job.

Both read the same generated, shuffled JSONL (rows of ~2 KB, 4 responses per query from each of 2
models, continuous `verify.score`), compute per query and model the pass rate (DeepDistill
thresholds per domain), mean score and CV (sample std), and write every row back in input order
with `grade` and a pass-rate band `difficulty`. The anchor holds every row in memory (a dict of
lists, then a second loop); `still grade` spools to disk and holds only small keys. Timed as
separate processes; peak RSS from getrusage(RUSAGE_CHILDREN) of a fresh wrapper (bench/sample.py).

    python bench/grade.py                  # 200k rows
    python bench/grade.py --rows 1000000 --spill-after 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample import timed  # noqa: E402 - the shared timing wrapper of the benches

ANCHOR_SCRIPT = r"""
import json, math, sys
thresholds = {"math": 0.99, "code": 0.99, "science": 0.998, "other": 0.7}
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
groups = {}
for r in rows:
    groups.setdefault(r["id"], {}).setdefault(r["model"], []).append(r)
grades, levels = {}, {}
for qid, models in groups.items():
    g = {}
    for model, rs in sorted(models.items()):
        scores = [r["verify"]["score"] for r in rs]
        n = len(scores)
        mu = sum(scores) / n
        sd = math.sqrt(sum((s - mu) ** 2 for s in scores) / (n - 1)) if n > 1 else None
        passed = sum(1 for r in rs if r["verify"]["score"] > thresholds.get(r["domain"], 0.99))
        g[model] = {"pass_rate": passed / n, "mean_score": mu, "cv": sd / mu if sd is not None and mu else None,
                    "n": n, "n_truncated": sum(1 for r in rs if r.get("finish_reason") == "length")}
    rate = sum(m["pass_rate"] for m in g.values()) / len(g)
    grades[qid] = g
    levels[qid] = 1 if rate > 0.75 else 2 if rate > 0.5 else 3 if rate > 0.25 else 4 if rate > 0 else 5
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for r in rows:
        r["grade"] = grades[r["id"]]
        r["difficulty"] = levels[r["id"]]
        out.write(json.dumps(r) + "\n")
"""


def generate(path: str, rows: int, seed: int, row_bytes: int = 2000) -> int:
    rng = random.Random(seed)
    words = "the of and to in is that for it as with was on be by this are we from at".split()
    pool = " ".join(rng.choice(words) for _ in range(row_bytes * 2))
    lines = []
    for i in range(rows):
        q, model = i // 8, f"m{(i // 4) % 2}"
        domain = ("math", "code", "science", "other")[q % 4]
        start = rng.randrange(len(pool) - row_bytes)
        score = rng.choice([0.0, 1.0, round(rng.random(), 3)])
        rec = {
            "id": f"q{q}",
            "query": f"Problem {q}",
            "response": pool[start : start + row_bytes - 300],
            "domain": domain,
            "model": model,
            "sample_idx": i % 4,
            "finish_reason": "length" if rng.random() < 0.05 else "stop",
            "verify": {"verdict": "correct" if score == 1.0 else "wrong", "score": score},
        }
        lines.append(json.dumps(rec) + "\n")
    rng.shuffle(lines)  # grade must not need sorted input
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(lines)
    return os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spill-after", type=int, default=500_000, help="still grade --spill-after")
    ap.add_argument("--keep", metavar="DIR", help="Keep the generated data and outputs here.")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="still-bench-grade-")
    os.makedirs(tmp, exist_ok=True)
    data = os.path.join(tmp, "rows.jsonl")
    size = generate(data, args.rows, args.seed)
    print(f"rows {args.rows}, {size / args.rows:.0f} B/row, {size / 2**20:.0f} MiB, shuffled")
    still_out, anchor_out = os.path.join(tmp, "still.jsonl"), os.path.join(tmp, "anchor.jsonl")
    still_cmd = [sys.executable, "-m", "still", "grade", "-q", "--spill-after", str(args.spill_after)]
    still_cmd += [data, "-o", still_out]
    if os.path.exists("/usr/bin/taskset"):
        still_cmd = ["taskset", "-c", "0", *still_cmd]
    t_still, cpu_still, rss_still = timed(still_cmd)
    print(
        f"still grade : {t_still:7.2f} s  {args.rows / t_still:9,.0f} rows/s wall  "
        f"{args.rows / cpu_still:9,.0f} rows/CPU-s  peak RSS {rss_still} MiB"
    )
    t_an, cpu_an, rss_an = timed([sys.executable, "-c", ANCHOR_SCRIPT, data, anchor_out])
    print(
        f"in-memory   : {t_an:7.2f} s  {args.rows / t_an:9,.0f} rows/s wall  "
        f"{args.rows / cpu_an:9,.0f} rows/CPU-s  peak RSS {rss_an} MiB"
    )
    print(
        f"ratio       : still is {t_an / t_still:.2f}x as fast (wall), {cpu_an / cpu_still:.2f}x less CPU, "
        f"{rss_an / max(rss_still, 1):.1f}x less memory"
    )
    same = 0
    with open(still_out, encoding="utf-8") as a, open(anchor_out, encoding="utf-8") as b:
        for x, y in zip(a, b, strict=True):
            gx, gy = json.loads(x), json.loads(y)
            ok = gx["difficulty"] == gy["difficulty"] and all(
                gx["grade"][m]["n"] == gy["grade"][m]["n"]
                and gx["grade"][m]["pass_rate"] == gy["grade"][m]["pass_rate"]
                and abs(gx["grade"][m]["mean_score"] - gy["grade"][m]["mean_score"]) < 1e-9
                for m in gy["grade"]
            )
            same += ok
    print(f"agreement   : {same} of {args.rows} rows carry the same grade and difficulty")
    if not args.keep:
        for name in ("rows.jsonl", "still.jsonl", "anchor.jsonl"):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
