"""Benchmark: sandboxed Python runs per second per core versus unsandboxed subprocesses.

Runs the same small snippets (a) as plain ``python -c CODE`` subprocesses (the baseline most
checkers use, with no isolation), (b) in still's sandbox, and (c) end to end through
``check_code`` with one stdin/stdout case. Runs are sequential on one thread (latency), then
``--jobs`` at a time (throughput, divided by the number of cores for runs/s/core). still runs
Python with -S (site-packages appended to sys.path instead of running the .pth hooks), so the -S
baseline is printed too. Also the sandbox's setup overhead: median wall time of /bin/true inside
the sandbox minus outside. On a loaded machine the sequential figures mostly measure scheduling
latency (bwrap -> init -> setpriv -> prlimit -> program is a chain of wake-ups); the concurrent
ones measure CPU cost.

    python bench/verify_code.py [--runs 100] [--sandbox auto] [--jobs N]

Goals (issue #5): >= 20 sandboxed runs/s/core, setup <= 15 ms. Issue #8 moved assert/pytest-style
checks to a trusted supervisor plus a separate solution process: the HumanEval-style line measures
that path (goal still >= 20 runs/s/core), with the warm zygote (root callers, the default) and
without it (STILL_SANDBOX_ZYGOTE=0: one sandbox and interpreter per run) in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from still.core.sandbox import Limits, get_sandbox, setup_overhead_ms
from still.core.verify_code import CodeConfig, check_code


def snippets(n: int) -> list[str]:
    return [f"import sys\nprint(sum(i * i for i in range({1000 + 37 * i})) % 1000003)" for i in range(n)]


def measure(label: str, fn, items: list[str], jobs: int = 1) -> float:
    t0 = time.perf_counter()
    if jobs == 1:
        for item in items:
            fn(item)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(fn, items))
    wall = time.perf_counter() - t0
    rate = len(items) / wall
    print(f"{label:44s} {rate:7.1f} runs/s   {1000 * wall / len(items):6.1f} ms/run")
    return rate


def cpu_per_check(check, items: list[str]) -> float:
    """CPU seconds per check of the whole process tree (sandboxes, zygotes, supervisors,
    solutions and this process): what a loaded box cannot blur as it blurs wall time. This
    process becomes a child subreaper so the orphans of sandboxes are reaped (and counted) here;
    the zygotes are closed at the end so their children's time is counted too."""
    import ctypes
    import resource

    from still.core.sandbox_zygote import close_zygotes

    def reap() -> None:
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def used() -> float:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        s = resource.getrusage(resource.RUSAGE_SELF)
        return c.ru_utime + c.ru_stime + s.ru_utime + s.ru_stime

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    close_zygotes()
    reap()
    start = used()
    for item in items:
        check(item)
    close_zygotes()
    reap()
    return (used() - start) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--jobs", type=int, default=2 * (os.cpu_count() or 1), help="concurrent runs (per-core figure)")
    args = ap.parse_args()
    sb = get_sandbox(args.sandbox)
    items = snippets(args.runs)
    limits = Limits()
    print(f"backend: {sb.backend} (uid drop: {sb.drop_to_uid}); {args.runs} runs each; python {sys.version.split()[0]}")

    def plain(code: str) -> None:
        subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=True)

    def plain_s(code: str) -> None:
        subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, timeout=30, check=True)

    def boxed(code: str) -> None:
        res = sb.run([sys.executable, "-S", "-c", code], limits=limits)
        assert res.exit_code == 0, res.stderr

    def verified(code: str) -> None:
        expected = str(sum(i * i for i in range(int(code.split("range(")[1].split(")")[0]))) % 1000003)
        res = check_code(f"```python\n{code}\n```", {"inputs": [""], "outputs": [expected]}, {}, CodeConfig())
        assert res["verdict"] == "pass", res

    def verified_assert(code: str) -> None:
        # HumanEval style: the trusted supervisor runs check(candidate), the solution answers
        # from its own process (two interpreters per run instead of one).
        n = int(code.split("range(")[1].split(")")[0])
        record = {
            "test": f"def check(candidate):\n    assert candidate({n}) == {sum(i * i for i in range(n)) % 1000003}\n",
            "entry_point": "f",
        }
        solution = "def f(n):\n    return sum(i * i for i in range(n)) % 1000003\n"
        res = check_code(f"```python\n{solution}```", None, record, CodeConfig(sandbox=args.sandbox))
        assert res["verdict"] == "pass", res

    def verified_pytest(code: str) -> None:
        # KodCode style: a pytest file importing from the solution (the supervisor imports pytest)
        n = int(code.split("range(")[1].split(")")[0])
        expected = sum(i * i for i in range(n)) % 1000003
        tests = f"from solution import f\n\n\ndef test_f():\n    assert f({n}) == {expected}\n"
        solution = "def f(n):\n    return sum(i * i for i in range(n)) % 1000003\n"
        res = check_code(f"```python\n{solution}```", tests, {}, CodeConfig(sandbox=args.sandbox))
        assert res["verdict"] == "pass", res

    base = measure("unsandboxed subprocess (python -c)", plain, items)
    base_s = measure("unsandboxed subprocess (python -S -c)", plain_s, items)
    ours = measure(f"sandboxed ({sb.backend}, python -S -c)", boxed, items)
    e2e = measure("check_code, 1 stdin/stdout case", verified, items)
    overhead = setup_overhead_ms(sb, runs=max(10, args.runs // 5))
    cores = os.cpu_count() or 1
    base_par = measure(f"unsandboxed python -S -c, {args.jobs} concurrent", plain_s, items, args.jobs)
    ours_par = measure(f"sandboxed, {args.jobs} concurrent", boxed, items, args.jobs)
    print(f"sandboxed / unsandboxed: {ours / base:.2f}x runs/s (vs python -S: {ours / base_s:.2f}x)")
    print(f"concurrent, per core ({cores} cores): sandboxed {ours_par / cores:.1f} runs/s/core, ", end="")
    print(f"unsandboxed -S {base_par / cores:.1f} runs/s/core ({ours_par / base_par:.2f}x)")
    jobs = args.jobs
    he_par = measure(f"check_code, HumanEval style, {jobs} concurrent", verified_assert, items, jobs)
    kc_par = measure(f"check_code, KodCode (pytest) style, {jobs} concurrent", verified_pytest, items, jobs)
    # the same checks with a sandbox set-up and an interpreter start per run (no warm zygote)
    os.environ["STILL_SANDBOX_ZYGOTE"] = "0"
    he_cold = measure(f"  HumanEval, one sandbox per run, {jobs} concurrent", verified_assert, items, jobs)
    kc_cold = measure(f"  KodCode, one sandbox per run, {jobs} concurrent", verified_pytest, items, jobs)
    del os.environ["STILL_SANDBOX_ZYGOTE"]
    print(f"check_code / unsandboxed: {e2e / base:.2f}x runs/s")
    print(f"HumanEval-style check_code (supervisor + solution process): {he_par / cores:.1f} runs/s/core ", end="")
    print(f"(goal >= 20); one sandbox per run {he_cold / cores:.1f} runs/s/core (warm zygote {he_par / he_cold:.2f}x)")
    print(f"KodCode-style check_code: {kc_par / cores:.1f} runs/s/core; ", end="")
    print(f"one sandbox per run {kc_cold / cores:.1f} runs/s/core (warm zygote {kc_par / kc_cold:.2f}x)")
    # CPU per check, sequential, with and without the warm zygote (zygote start-up included)
    warm_cpu = cpu_per_check(verified_assert, items)
    os.environ["STILL_SANDBOX_ZYGOTE"] = "0"
    cold_cpu = cpu_per_check(verified_assert, items)
    del os.environ["STILL_SANDBOX_ZYGOTE"]
    print(f"HumanEval-style CPU per check (whole tree): warm zygote {1000 * warm_cpu:.1f} ms = ", end="")
    print(f"{1 / warm_cpu:.1f} checks per CPU-second; one sandbox per run {1000 * cold_cpu:.1f} ms = ", end="")
    print(f"{1 / cold_cpu:.1f} ({cold_cpu / warm_cpu:.2f}x)")
    print(f"sandbox setup overhead: {overhead:.1f} ms (goal <= 15 ms); ", end="")
    print(f"sequential sandboxed runs/s: {ours:.1f}, ", end="")
    print(f"concurrent {ours_par / cores:.1f} runs/s/core (goal >= 20); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
