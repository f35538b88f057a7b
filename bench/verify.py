"""Benchmark `still verify` (math) against calling math-verify's parse + verify directly.

    python bench/verify.py [--limit 600] [--cpu 0]

Pairs: every MATH-500, AIME 2024/2025 and AMC 2023 reference answer against reformatted responses
(\\boxed{} after </think>, "final answer is $..$", "Answer:" lines with extra spaces, \\dfrac,
zero-padded integers) and against a perturbed wrong answer (integer + 1, fraction + 1, "+ 1").
Both sides run pinned to one core, one pair at a time, on the same pairs:

- math-verify: ``verify(parse(gold), parse(response))`` as its README shows (SIGALRM timeouts);
- still: ``MathChecker.check`` with 1 worker process (the core path of ``still verify``).

Prints pairs/s, the ratio, p50/p99/max latency and agreement with the intended labels.

A second set, free-form (unboxed) answers: our cases per class (tests/data/verify/freeform_cases.jsonl:
the response is the answer, "final answer" sentences, several boxes, number formats, sets and
relations, matrices and rounded decimals) plus, per reference answer, the answer as the whole
response, in a prose sentence ("Therefore the value is $..$."), and a perturbed wrong one in prose.
Agreement is printed per class for both tools.
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
FREEFORM = ROOT / "tests" / "data" / "verify" / "freeform_cases.jsonl"


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


def make_freeform_pairs(limit: int) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """Unboxed pairs and their class names (see the module docstring)."""
    pairs: list[tuple[str, str, bool]] = []
    classes: list[str] = []
    for line in FREEFORM.open():
        case = json.loads(line)
        pairs.append((case["gold"], case["response"], bool(case["expected"])))
        classes.append(case["class"])
    for answer in benchmark_answers(limit):
        pairs.append((answer, f"${answer}$", True))
        classes.append("bench:whole-response")
        pairs.append((answer, f"</think>Putting it together, the value is ${answer}$.", True))
        classes.append("bench:prose")
        wrong = perturbed(answer)
        if wrong is not None:
            pairs.append((answer, f"</think>Putting it together, the value is ${wrong}$.", False))
            classes.append("bench:prose")
    return pairs, classes


def by_class(classes: list[str], verdicts: list[bool], labels: list[bool]) -> dict[str, tuple[int, int]]:
    table: dict[str, tuple[int, int]] = {}
    for name, verdict, label in zip(classes, verdicts, labels, strict=True):
        agree, total = table.get(name, (0, 0))
        table[name] = (agree + (verdict == label), total + 1)
    return table


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


def compare_set(title: str, pairs: list[tuple[str, str, bool]]) -> tuple[list[bool], list[bool], list[bool]]:
    """Run both tools on one set of pairs, print their rows; (labels, math-verify, still) verdicts."""
    labels = [lab for _, _, lab in pairs]
    print(f"\n{title}: {len(pairs)} pairs ({labels.count(False)} wrong answers)")
    mv_lat, mv_verdicts = run_math_verify(pairs)
    st_lat, st_verdicts, worker_calls = run_still(pairs)
    mv = describe("math-verify", mv_lat, mv_verdicts, labels)
    st = describe("still", st_lat, st_verdicts, labels)
    print(f"still sent {worker_calls}/{len(pairs)} pairs to the math-verify worker; the rest took the fast paths")
    print(f"throughput ratio still / math-verify: {st['pairs_per_s'] / mv['pairs_per_s']:.1f}x")
    print(f"p99 ratio math-verify / still: {mv['p99_ms'] / st['p99_ms']:.1f}x")
    return labels, mv_verdicts, st_verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=600, help="reference answers to use (600 = all)")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin both tools to (-1: no pinning)")
    args = ap.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})  # workers forked later inherit the pinning
    compare_set(f"boxed and anchored set from {min(args.limit, 600)} reference answers", make_pairs(args.limit))
    free, classes = make_freeform_pairs(args.limit)
    labels, mv_verdicts, st_verdicts = compare_set("free-form (unboxed) set", free)
    mv_table = by_class(classes, mv_verdicts, labels)
    st_table = by_class(classes, st_verdicts, labels)
    print(f"{'agreement by class':28s} {'math-verify':>12s} {'still':>12s}")
    for name in sorted(st_table):
        (m_ok, n), (s_ok, _) = mv_table[name], st_table[name]
        print(f"{name:28s} {m_ok:>6d}/{n:<5d} {s_ok:>6d}/{n:<5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
