"""Benchmark `still decontam` against an open-r1-style 8-gram baseline, in one run on the same data.

Index: the shared MATH-500, GSM8K, AIME 24 and AMC 23 questions plus variants of them (numbers
changed and a word swapped) up to ~10k items. Records: ~1 KB prompts, mostly clean templated maths
with planted benchmark questions. The baseline is open-r1's `scripts/decontaminate.py` rule: lower-case,
collapse whitespace, a Python set of the benchmark's word 8-grams, and a record is contaminated when
any of its 8-grams is in the set. Prints records/s (CPU time, one core) for both, the ratio, and the recall
of both on the planted suite. `still` is timed as `run_decontam` calls it (blocks of records screened
with numpy, see `Matcher.match_many`), and one record at a time for comparison.

    .venv/bin/python bench/decontam.py [--records 20000] [--items 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from decontam_suite import KINDS, clean_problem, planted_suite  # bench/ (a test fixture too)

from still.core.decontam import RECORD_BLOCK, Benchmark, DecontamIndex, IndexParams, Matcher, load_benchmarks

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "tests" / "data" / "benchmarks"
NAMES = ("math500", "gsm8k_test", "aime24", "amc23")
SWAP_WORDS = ("exactly", "now", "then", "also", "again", "still", "together", "first")


class OpenR1Baseline:
    """open-r1 scripts/decontaminate.py: lower-case + whitespace normalisation, set of word 8-grams."""

    def __init__(self, texts: list[str], n: int = 8) -> None:
        self.n = n
        self.lookup: set[str] = set()
        for text in texts:
            self.lookup.update(self.ngrams(self.normalise(text)))

    @staticmethod
    def normalise(text: str) -> str:
        return " ".join(text.lower().strip().split())

    def ngrams(self, text: str) -> list[str]:
        words = text.split()
        return [" ".join(words[i : i + self.n]) for i in range(len(words) - self.n + 1)]

    def contaminated(self, text: str) -> bool:
        # open-r1's expression, verbatim; it also runs once per benchmark, here once for all of them.
        ngrams = self.ngrams(self.normalise(text))
        return any(set(ngram in self.lookup for ngram in ngrams))


def variant(text: str, rng: random.Random) -> str:
    text = re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), text)
    words = text.split(" ")
    words.insert(rng.randrange(len(words) + 1), rng.choice(SWAP_WORDS))
    return " ".join(words)


def build_items(target: int, seed: int) -> list[Benchmark]:
    real = load_benchmarks([str(BENCH_DIR / f"{n}.jsonl") for n in NAMES], None)
    rng = random.Random(seed)
    base = [text for b in real for _, text in b.items]
    extra: list[tuple[object, str]] = []
    k = 0
    while len(base) + len(extra) < target:
        extra.append((f"v{k}", variant(base[k % len(base)], rng)))
        k += 1
    if extra:
        real.append(Benchmark("variants", "generated", "", "problem", extra))
    return real


def kb_prompt(rng: random.Random, core: str = "") -> str:
    parts = [core] if core else []
    while sum(len(p) for p in parts) < 1000:
        parts.insert(rng.randrange(len(parts) + 1), clean_problem(rng))
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--planted", type=float, default=0.01, help="fraction of timed records with a planted item")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    benches = build_items(args.items, args.seed)
    all_texts = [text for b in benches for _, text in b.items]
    t0 = time.process_time()
    index = DecontamIndex.build(benches)
    t_build = time.process_time() - t0
    t0 = time.process_time()
    matcher = Matcher(index, IndexParams())
    matcher.screen([""])  # builds the screen's tables
    t_compile = time.process_time() - t0
    t0 = time.process_time()
    baseline = OpenR1Baseline(all_texts)
    t_base_index = time.process_time() - t0
    print(
        f"index: {index.n_items} items; still build {t_build:.2f} s + compile {t_compile:.2f} s "
        f"(a saved index loads in about the compile time), baseline set {t_base_index:.2f} s (CPU)"
    )

    real_items = [(b.name, i, text) for b in benches[: len(NAMES)] for i, (_, text) in enumerate(b.items)]
    planted = [p for p in planted_suite(real_items, seed=args.seed, clean=0) if p.kind != "clean"]
    texts = []
    for _ in range(args.records):
        core = rng.choice(planted).text if rng.random() < args.planted else ""
        texts.append(kb_prompt(rng, core))
    clean_texts = [kb_prompt(rng) for _ in range(args.records)]
    mean_len = sum(map(len, texts)) / len(texts)
    print(f"records: {len(texts)} prompts of {mean_len:.0f} chars on average, {args.planted:.0%} with a planted item")

    def timed(fn, data: list[str]) -> float:
        """CPU seconds of one pass (CPU time, and passes alternating between the tools, because
        the machine may be shared)."""
        t = time.process_time()
        for text in data:
            fn(text)
        return time.process_time() - t

    def one_at_a_time(text: str) -> None:
        matcher._recent.clear()  # no answers from the cache
        matcher.match(text)

    def timed_blocks(data: list[str]) -> float:
        """CPU seconds of `match_many` over the data in blocks, as `run_decontam` calls it."""
        matcher._recent.clear()  # earlier passes must not answer from the cache
        t = time.process_time()
        for start in range(0, len(data), RECORD_BLOCK):
            matcher.match_many([(text, "query") for text in data[start : start + RECORD_BLOCK]])
        return time.process_time() - t

    for label, data in (("clean only", clean_texts), (f"{args.planted:.0%} planted", texts)):
        best_still = best_single = best_base = float("inf")
        for _ in range(3):
            best_still = min(best_still, timed_blocks(data))
            best_single = min(best_single, timed(one_at_a_time, data))
            best_base = min(best_base, timed(baseline.contaminated, data))
        r_still, r_single, r_base = len(data) / best_still, len(data) / best_single, len(data) / best_base
        print(
            f"{label:>12}: still {r_still:,.0f} records/s (one at a time {r_single:,.0f}), "
            f"open-r1 baseline {r_base:,.0f} records/s, ratio {r_still / r_base:.2f}x"
        )

    # Distillation data repeats each query once per response (k = 4 here, in runs): `match`
    # remembers recent results by text; the baseline recomputes.
    repeated = [text for text in clean_texts[:2500] for _ in range(4)]
    t_still, t_base = timed_blocks(repeated), timed(baseline.contaminated, repeated)
    print(
        f"queries x4 (one per response): still {len(repeated) / t_still:,.0f} records/s, "
        f"baseline {len(repeated) / t_base:,.0f} records/s, ratio {t_base / t_still:.2f}x"
    )

    # End to end through the CLI on a JSONL file, with a prebuilt index (one process, one core).
    with tempfile.TemporaryDirectory() as tmp:
        bench_files = []
        for b in benches:
            path = Path(tmp) / f"{b.name}.jsonl"
            path.write_text("".join(json.dumps({"id": i, "problem": t}) + "\n" for i, t in b.items))
            bench_files.append(str(path))
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"id": i, "query": t}) + "\n" for i, t in enumerate(texts)))
        still = [sys.executable, "-m", "still", "decontam"]
        idx = Path(tmp) / "idx"
        subprocess.run([*still, "index", "build", "-q", "--against", ",".join(bench_files), "-o", str(idx)], check=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        stats = Path(tmp) / "stats.json"
        out = Path(tmp) / "clean.jsonl"
        t = time.perf_counter()
        cmd = [*still, "--index", str(idx), "-q", "--stats", str(stats), "-o", str(out), str(data)]
        subprocess.run(cmd, check=True, env=env)
        total = time.perf_counter() - t
        streaming = json.loads(stats.read_text())["seconds"]  # the run, after the index is loaded
        print(
            f"still decontam CLI (JSONL in and out): {len(texts) / streaming:,.0f} records/s once the index "
            f"is loaded; {total:.1f} s in all, {total - streaming:.1f} s of it starting and loading the index"
        )

    # Recall on the planted suite (the real items only; clean = templated maths).
    suite = list(planted_suite(real_items, seed=args.seed + 1, clean=5000))
    offsets = {}
    start = 0
    for b in benches:
        offsets[b.name] = start
        start += len(b.items)
    found_still: Counter[str] = Counter()
    found_base: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for p, hits in zip(suite, matcher.match_many([(p.text, "query") for p in suite]), strict=True):
        total[p.kind] += 1
        if p.kind == "clean":
            found_still[p.kind] += bool(hits)
        else:
            assert p.bench is not None and p.item is not None
            found_still[p.kind] += any(h.item == offsets[p.bench] + p.item for h in hits)
        found_base[p.kind] += baseline.contaminated(p.text)
    print(f"{'kind':<12} {'n':>6} {'still':>8} {'baseline':>9}")
    for kind in KINDS:
        label = "flagged" if kind == "clean" else "recall"
        print(
            f"{kind:<12} {total[kind]:>6} {found_still[kind] / total[kind]:>8.2%} "
            f"{found_base[kind] / total[kind]:>9.2%}  ({label})"
        )


if __name__ == "__main__":
    main()
