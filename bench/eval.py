"""Benchmark `still eval`: scoring throughput, and its overhead over the raw engine.

    python bench/eval.py [--rows 100000] [--k 4]        # eval score on existing responses
    python bench/eval.py --overhead [--problems 32]     # eval run vs a plain transformers loop

Rows: the carried MATH-500, AIME 2024 and AMC 2023 problems, k samples each, repeated under fresh
benchmark names until --rows lines: ~60% boxed correct answers, the rest boxed wrong answers,
unboxed "final answer" sentences and a few truncated samples, each with n_tokens. In one run on the
same file:

- ``still eval score`` (verify + grouping + pass@k/cons@k + bootstrap intervals), end to end;
- ``still verify`` on the same file (what eval score adds on top of verification);
- a lighteval-style loop: math-verify ``parse`` + ``verify`` per sample, then avg@k by hand, on a
  subset (it is slow), reported per row.

With ``--overhead``: ``still eval --engine hf`` (generate, verify, score, summary) against the
batched transformers ``generate`` loop of bench/generate.py on the same requests (the first
--problems GSM8K questions, k samples each, R1 prompt), on a random model built here: the ratio
is what everything around the engine costs.

Prints rows/s and ratios. Not a test: timings depend on the machine (say if it was loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "benchmarks"


def problems() -> list[tuple[str, str, str]]:
    out = []
    for name in ("math500", "aime24", "amc23"):
        for i, line in enumerate((DATA / f"{name}.jsonl").open()):
            row = json.loads(line)
            answer = row["answer"]
            answer = str(int(answer)) if isinstance(answer, float) else str(answer)
            out.append((name, str(row.get("unique_id", row.get("id", i))), answer))
    return out


def write_rows(path: Path, rows: int, k: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    base = problems()
    written = 0
    with path.open("w") as f:
        copy = 0
        while written < rows:
            for bench, pid, answer in base:
                for i in range(k):
                    roll = rng.random()
                    if roll < 0.6:
                        response = f"<think>steps</think>So the answer is $\\boxed{{{answer}}}$."
                    elif roll < 0.8:
                        response = f"<think>steps</think>The answer is $\\boxed{{{rng.randint(0, 999)}}}$."
                    elif roll < 0.97:
                        response = f"</think>\n\nThe final answer is ${answer}$. I hope it is correct."
                    else:
                        response = "<think>and then we"
                    rec = {
                        "benchmark": f"{bench}-{copy}",
                        "id": pid,
                        "answer": answer,
                        "response": response,
                        "sample_idx": i,
                        "n_tokens": rng.randint(100, 4000),
                    }
                    f.write(json.dumps(rec) + "\n")
                written += k
                if written >= rows:
                    return
            copy += 1


def timed(argv: list[str], path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as fh:
        subprocess.run(argv, stdin=fh, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def lighteval_style(path: Path, limit: int) -> float:
    from math_verify import parse, verify

    start = time.perf_counter()
    per_problem: dict[tuple[str, str], list[bool]] = {}
    with path.open() as fh:
        for n, line in enumerate(fh):
            if n >= limit:
                break
            rec = json.loads(line)
            ok = bool(verify(parse(rec["answer"]), parse(rec["response"])))
            per_problem.setdefault((rec["benchmark"], rec["id"]), []).append(ok)
    _ = sum(sum(v) / len(v) for v in per_problem.values()) / max(1, len(per_problem))
    return (time.perf_counter() - start) / limit


def overhead(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "tests"))
    from generate import HF_ANCHOR, report, timed_pair
    from tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="still-bench-eval-") as tmp:
        model = build_tiny_model(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        rows = (DATA / "gsm8k_test.jsonl").read_text().splitlines()[: args.problems]
        bench, queries = Path(tmp) / "bench.jsonl", Path(tmp) / "q.jsonl"
        bench.write_text("\n".join(rows) + "\n")
        queries.write_text("".join(json.dumps({"query": json.loads(r)["question"]}) + "\n" for r in rows))
        ours = [sys.executable, "-m", "still", "eval", "-q", "--model", str(model), "--bench", f"gsm={bench}"]
        ours += ["-k", str(args.k), "--max-tokens", str(args.max_tokens), "--batch-size", "8", "--dtype", "float32"]
        anchor = [sys.executable, "-c", HF_ANCHOR, str(model), str(queries), str(args.k), str(args.max_tokens), "8"]
        print(f"{args.problems} problems x {args.k} samples, {args.max_tokens} new tokens, best of {args.repeats}")
        t_ours, t_anchor = timed_pair(ours, anchor, args.repeats)
        report("still eval (hf)", "transformers loop", t_ours, t_anchor, args.problems * args.k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lighteval-rows", type=int, default=2000)
    parser.add_argument("--overhead", action="store_true", help="eval run vs a plain transformers loop")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.overhead:
        overhead(args)
        return
    still = [sys.executable, "-m", "still"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "responses.jsonl"
        write_rows(path, args.rows, args.k)
        env_note = f"{os.cpu_count()} CPUs visible"
        t_score = timed([*still, "eval", "score", "-q", "-"], path)
        t_verify = timed([*still, "verify", "-q", "-"], path)
        per_row = lighteval_style(path, args.lighteval_rows)
    rows = args.rows
    print(f"{rows} responses, k={args.k} ({env_note}; one process each)")
    print(f"  still eval score : {t_score:7.2f} s  {rows / t_score:9,.0f} rows/s")
    print(
        f"  still verify     : {t_verify:7.2f} s  {rows / t_verify:9,.0f} rows/s  (eval score / verify time: "
        f"{t_score / t_verify:.2f}x)"
    )
    print(
        f"  lighteval-style  : {per_row * 1e3:7.3f} ms/row {1 / per_row:9,.0f} rows/s  "
        f"(math-verify parse+verify per sample, {args.lighteval_rows} rows)"
    )
    print(f"  still eval score is {per_row * rows / t_score:.1f}x the lighteval-style loop")


if __name__ == "__main__":
    main()
