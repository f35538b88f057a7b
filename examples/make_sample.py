"""Generate the synthetic demo dataset for `make demo` (deterministic for a given --seed).

Writes into --out:
  raw.jsonl    teacher-style traces: math and code problems with reference answers / tests,
               k responses per query with <think> traces, some correct, some wrong, some
               truncated; planted exact and near duplicates, and planted contamination.
  bench.jsonl  a small synthetic "benchmark" whose items are planted into raw.jsonl.
  truth.json   what was planted (for the demo's summary).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
ITEMS = ["apples", "marbles", "stamps", "books", "coins", "pencils", "shells", "cards"]
FILLER = (
    "Let me restate the problem carefully. I will set up the quantities and check each step, "
    "then verify the result by substituting it back into the conditions of the problem."
).split()


def math_problem(rng: random.Random, i: int) -> tuple[str, int]:
    kind = i % 4
    a, b, c = rng.randint(3, 97), rng.randint(2, 40), rng.randint(2, 12)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if kind == 0:
        return f"{name} has {a} {item} and buys {b} more packs of {c} {item} each. How many {item} now?", a + b * c
    if kind == 1:
        return f"What is the remainder when {a * 101 + b} is divided by {c}?", (a * 101 + b) % c
    if kind == 2:
        return f"Find the sum of all positive divisors of {a * c}.", sum(
            d for d in range(1, a * c + 1) if a * c % d == 0
        )
    return f"Compute {a}^2 - {b}^2 + {c}.", a * a - b * b + c


def code_problem(rng: random.Random, i: int) -> tuple[str, dict[str, list[str]], str, str]:
    k = rng.randint(2, 60)
    kind = i % 3
    if kind == 0:
        prompt = f"Read integers n and then n numbers; print the sum of those divisible by {k}."
        good = f"n=int(input())\nxs=list(map(int,input().split()))\nprint(sum(x for x in xs if x%{k}==0))"
        bad = f"n=int(input())\nxs=list(map(int,input().split()))\nprint(sum(x for x in xs if x%{k}!=0))"
        cases = []
        for _ in range(4):
            xs = [rng.randint(1, 50) for _ in range(rng.randint(1, 6))]
            cases.append((f"{len(xs)}\n{' '.join(map(str, xs))}\n", f"{sum(x for x in xs if x % k == 0)}\n"))
    elif kind == 1:
        prompt = f"Read a line of text and print it repeated {k} times, separated by single spaces."
        good = f"s=input().strip()\nprint(' '.join([s]*{k}))"
        bad = f"s=input().strip()\nprint(' '.join([s]*{k - 1}))"
        cases = []
        for _ in range(4):
            w = "".join(rng.choice("abcxyz") for _ in range(rng.randint(1, 5)))
            cases.append((w + "\n", " ".join([w] * k) + "\n"))
    else:
        prompt = f"Read an integer n and print the first n multiples of {k}, one per line."
        good = f"n=int(input())\nfor i in range(1,n+1):\n    print(i*{k})"
        bad = f"n=int(input())\nfor i in range(n):\n    print(i*{k})"
        cases = []
        for _ in range(4):
            n = rng.randint(1, 5)
            cases.append((f"{n}\n", "".join(f"{j * k}\n" for j in range(1, n + 1))))
    tests = {"inputs": [c[0] for c in cases], "outputs": [c[1] for c in cases]}
    return prompt, tests, good, bad


def think(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(words))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="demo-out")
    ap.add_argument("--queries", type=int, default=120, help="math + code queries")
    ap.add_argument("--k", type=int, default=4, help="responses per query")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # the benchmark's problems use their own template and numbers, so the training data holds
    # them only where they are planted below
    bench = []
    for j in range(12):
        a, b, m = rng.randint(1000, 9999), rng.randint(100, 999), rng.randint(13, 97)
        q = (
            f"A sequence starts at {a} and each term adds {b}. What is the remainder when the "
            f"{j + 20}th term is divided by {m}? Give your answer as an integer."
        )
        bench.append({"id": f"bench-{j}", "problem": q, "answer": str((a + (j + 19) * b) % m)})

    rows: list[dict[str, object]] = []
    truth: dict[str, object] = {"queries": args.queries, "k": args.k}
    n_code = args.queries // 4
    for i in range(args.queries):
        is_code = i < n_code
        if is_code:
            query, tests, good, bad = code_problem(rng, i)
            record_base: dict[str, object] = {"query": query, "tests": tests, "domain": "code"}
        else:
            query, ans = math_problem(rng, i)
            record_base = {"query": query, "answer": str(ans), "domain": "math"}
        skill = rng.random()
        for s in range(args.k):
            right = rng.random() < skill
            trace = think(rng, rng.randint(30, 160))
            truncated = rng.random() < 0.05
            if is_code:
                body = good if right else bad
                final = f"Here is the program.\n\n```python\n{body}\n```"
            else:
                shown = ans if right else ans + rng.choice([-2, -1, 1, 3])
                final = f"The answer is $\\boxed{{{shown}}}$."
            response = f"{trace}</think>\n\n{final}" if not truncated else trace
            rows.append(
                {
                    **record_base,
                    "response": response,
                    "model": "teacher-sim",
                    "sample_idx": s,
                    "finish_reason": "length" if truncated else "stop",
                    "n_tokens": len(response.split()),
                }
            )

    # planted exact duplicates: whole lines repeated
    exact = rng.sample(rows, 10)
    # planted near duplicates: the same query with a few words changed, with its own responses
    near = []
    for base in rng.sample([r for r in rows if r["domain"] == "math" and r["sample_idx"] == 0], 8):
        q = str(base["query"])
        near.append({**base, "query": "Please solve: " + q.replace(" How many", " How many in total"), "sample_idx": 0})
    # planted contamination: benchmark items copied verbatim or embedded in a longer prompt
    contaminated = []
    for j, item in enumerate(bench[:6]):
        text = (
            item["problem"] if j % 2 == 0 else f"Here is a practice question from class. {item['problem']} Show work."
        )
        contaminated.append(
            {
                "query": text,
                "answer": item["answer"],
                "domain": "math",
                "response": f"{think(rng, 40)}</think>\n\n$\\boxed{{{item['answer']}}}$",
                "model": "teacher-sim",
                "sample_idx": 0,
                "finish_reason": "stop",
                "n_tokens": 50,
            }
        )
    rows.extend(exact + near + contaminated)
    rng.shuffle(rows)
    truth.update(
        {
            "records": len(rows),
            "exact_duplicates": len(exact),
            "near_duplicates": len(near),
            "contaminated": len(contaminated),
            "bench_items": len(bench),
        }
    )

    with open(out / "raw.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "bench.jsonl", "w") as f:
        for b in bench:
            f.write(json.dumps(b) + "\n")
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {len(rows)} records to {out / 'raw.jsonl'} and {len(bench)} benchmark items to {out / 'bench.jsonl'}")


if __name__ == "__main__":
    main()
