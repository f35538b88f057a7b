"""Two synthetic domains with verifiable answers for the branch-merge showcase.

    python examples/branch_merge/make_domains.py --out DIR [--seed 0] [--teacher-train N] ...

`add`: two-digit addition, worked in <think> as a person writes it (ones: digit written and carry; tens), the sum boxed.
`sort`: four digits (--sort-len) to sort, the sorted digits in <think>, boxed as one number (1-9, so no
leading zero can hide a mistake).

Writes to DIR:
  teacher-train.jsonl  correct rule-made traces of both domains (the teacher's SFT data)
  fresh.jsonl          new problems for the teacher to answer (plus --planted eval problems)
  fresh-reference.jsonl  rule-made solutions of the new fresh problems (same ids; the reduced
                       test's REDI positives, where its barely trained teacher solves nothing)
  eval-add.jsonl, eval-sort.jsonl   held-out problems (question, answer), none seen in training
Eval and fresh problems are distinct and never in the teacher's traces, except the planted
copies of eval problems in fresh.jsonl that `still decontam` must find.
Queries in the training files carry the R1 instruction exactly as `still eval` appends it, so
students are trained on the prompt they are evaluated with.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DOMAINS = ("add", "sort")


def add_problem(rng: random.Random) -> tuple[str, str, str]:
    """Column addition as a person writes it: ones with the digit written and the carry, then tens,
    so the boxed sum reads off the lines in order (the format the it-learns test shows a 2-layer
    student learns; the first format listed the columns ones-first and left the answer to assemble)."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    think = f"{a % 10} + {b % 10} = {ones}, write {ones % 10}, carry {carry}\n{a // 10} + {b // 10} + {carry} = {tens}"
    return f"Add the numbers {a} and {b}.", f"<think>\n{think}\n</think>\n\\boxed{{{a + b}}}", str(a + b)


def sort_problem(rng: random.Random, length: int = 4) -> tuple[str, str, str]:
    digits = [rng.randint(1, 9) for _ in range(length)]
    ordered = "".join(str(d) for d in sorted(digits))
    shown = " ".join(str(d) for d in digits)
    think = " ".join(ordered)
    return f"Sort the digits {shown} ascending.", f"<think>\n{think}\n</think>\n\\boxed{{{ordered}}}", ordered


def write(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-train", type=int, default=2000, help="teacher traces per domain")
    parser.add_argument("--fresh", type=int, default=200, help="fresh problems per domain")
    parser.add_argument("--eval", type=int, default=50, help="held-out problems per domain")
    parser.add_argument("--sort-len", type=int, default=4, help="digits per sort problem")
    parser.add_argument("--planted", type=int, default=3, help="eval problems copied into fresh, per domain")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    teacher, fresh, reference = [], [], []
    makers: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
        "add": add_problem,
        "sort": lambda rng: sort_problem(rng, args.sort_len),
    }
    space = {"add": 90 * 90, "sort": 9**args.sort_len}
    for domain in DOMAINS:
        make = makers[domain]
        if args.eval + args.fresh > 0.5 * space[domain]:
            raise SystemExit(f"{domain} has {space[domain]} problems: ask for fewer --eval and --fresh")
        reserved: dict[str, tuple[str, str, str]] = {}  # eval, then fresh problems: all distinct
        while len(reserved) < args.eval + args.fresh:
            problem = make(rng)
            reserved.setdefault(problem[0], problem)
        problems = list(reserved.values())
        held_out, new = problems[: args.eval], problems[args.eval :]
        write(
            args.out / f"eval-{domain}.jsonl",
            [{"id": f"{domain}-eval-{i}", "question": q, "answer": a} for i, (q, _, a) in enumerate(held_out)],
        )
        for i, (q, r, a) in enumerate(new + held_out[: args.planted]):
            row = {"id": f"{domain}-f-{i}", "domain": domain, "query": f"{q}\n{R1_INSTRUCTION}", "answer": a}
            fresh.append(row)
            if i < len(new):  # never the planted eval problems' solutions
                reference.append({**row, "response": r})
        # the teacher's traces: any other problem (repeats allowed where the domain is small)
        i = 0
        while i < args.teacher_train:
            q, r, a = make(rng)
            if q not in reserved:
                query = f"{q}\n{R1_INSTRUCTION}"
                teacher.append({"id": f"{domain}-t-{i}", "domain": domain, "query": query, "response": r, "answer": a})
                i += 1
    rng.shuffle(teacher)
    write(args.out / "teacher-train.jsonl", teacher)
    write(args.out / "fresh.jsonl", fresh)
    write(args.out / "fresh-reference.jsonl", reference)


if __name__ == "__main__":
    main()
