"""Benchmark `still verify` (math) against calling math-verify's parse + verify directly.

    python bench/verify.py [--limit 600] [--cpu 0]

Pairs: every MATH-500, AIME 2024/2025 and AMC 2023 reference answer against reformatted responses
(\\boxed{} after </think>, "final answer is $..$", "Answer:" lines with extra spaces, \\dfrac,
zero-padded integers) and against a perturbed wrong answer (integer + 1, fraction + 1, "+ 1").
Both sides run pinned to one core, one pair at a time, on the same pairs:

- math-verify: ``verify(parse(gold), parse(response))`` as its README shows (SIGALRM timeouts);
- still: ``MathChecker.check`` with 1 worker process (the core path of ``still verify``).

Prints pairs/s, the ratio, p50/p99/max latency and agreement with the intended labels.
Not a test: timings depend on the machine. The code sandbox benchmark is bench/verify_code.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "benchmarks"


def benchmark_answers(limit: int) -> list[str]:
    answers = []
    for name in ("math500", "aime24", "amc23"):
        for line in (DATA / f"{name}.jsonl").open():
            answer = json.loads(line)["answer"]
            answers.append(str(int(answer)) if isinstance(answer, float) else str(answer))
    return answers[:limit]


def boxed(answer: str) -> str:
    return f"<think>Let me work through the steps carefully.</think>\nSo the answer is $\\boxed{{{answer}}}$."


def reformatted(answer: str) -> list[str]:
    spaced = answer.replace(",", ", ").replace("+", " + ").replace("=", " = ")
    out = [
        boxed(answer),
        f"</think>\n\nThe final answer is ${answer}$. I hope it is correct.",
        f"</think>Answer: ${spaced}$",
        boxed(answer.replace("\\frac", "\\dfrac")),
    ]
    if answer.isdigit():
        out.append(boxed(answer.zfill(4)))
    return out


def perturbed(answer: str) -> str | None:
    from still.core.verify_math import answer_key, exact_number

    number = exact_number(answer_key(answer))
    if number is not None:
        value = number.value + 1
        return str(value.numerator) if value.denominator == 1 else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
    if not any(t in answer for t in (",", "=", "\\text", "\\le")):
        return f"{answer} + 1"
    return None


def make_pairs(limit: int) -> list[tuple[str, str, bool]]:
    pairs = []
    for answer in benchmark_answers(limit):
        pairs += [(answer, r, True) for r in reformatted(answer)]
        wrong = perturbed(answer)
        if wrong is not None:
            pairs.append((answer, boxed(wrong), False))
    return pairs


def run_math_verify(pairs: list[tuple[str, str, bool]]) -> tuple[list[float], list[bool]]:
    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    latencies, verdicts = [], []
    for gold, response, _ in pairs:
        t0 = time.perf_counter()
        ok = bool(verify(parse(f"${gold}$"), parse(response)))
        latencies.append(time.perf_counter() - t0)
        verdicts.append(ok)
    return latencies, verdicts


def run_still(pairs: list[tuple[str, str, bool]]) -> tuple[list[float], list[bool], int]:
    from still.core.verify_math import MathChecker, MathConfig

    with MathChecker(MathConfig(timeout_s=2.0, workers=1)) as checker:
        checker.check("1", boxed("\\sin(\\pi/2)"))  # start the worker outside the timed loop
        checker.worker_calls = 0
        latencies, verdicts = [], []
        for gold, response, _ in pairs:
            t0 = time.perf_counter()
            verdict = checker.check(gold, response)["verdict"]
            latencies.append(time.perf_counter() - t0)
            verdicts.append(verdict == "correct")
        return latencies, verdicts, checker.worker_calls


def describe(name: str, latencies: list[float], verdicts: list[bool], labels: list[bool]) -> dict[str, float]:
    total = sum(latencies)
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    agree = sum(v == lab for v, lab in zip(verdicts, labels, strict=True))
    false_pos = sum(v and not lab for v, lab in zip(verdicts, labels, strict=True))
    row = {"pairs_per_s": len(latencies) / total, "p50_ms": qs[49] * 1e3, "p99_ms": qs[98] * 1e3}
    print(
        f"{name:12s} {row['pairs_per_s']:9.0f} pairs/s   p50 {row['p50_ms']:7.2f} ms   p99 {row['p99_ms']:7.2f} ms   "
        f"max {max(latencies) * 1e3:7.1f} ms   agrees with labels {agree}/{len(labels)} "
        f"(false positives {false_pos})"
    )
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=600, help="reference answers to use (600 = all)")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin both tools to (-1: no pinning)")
    args = ap.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})  # workers forked later inherit the pinning
    pairs = make_pairs(args.limit)
    labels = [lab for _, _, lab in pairs]
    print(f"{len(pairs)} pairs from {min(args.limit, 600)} reference answers ({labels.count(False)} wrong answers)")
    mv_lat, mv_verdicts = run_math_verify(pairs)
    st_lat, st_verdicts, worker_calls = run_still(pairs)
    mv = describe("math-verify", mv_lat, mv_verdicts, labels)
    st = describe("still", st_lat, st_verdicts, labels)
    print(f"still sent {worker_calls}/{len(pairs)} pairs to the math-verify worker; the rest took the fast paths")
    print(f"throughput ratio still / math-verify: {st['pairs_per_s'] / mv['pairs_per_s']:.1f}x")
    print(f"p99 ratio math-verify / still: {mv['p99_ms'] / st['p99_ms']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
