"""It learns: `still distill-train` teaches a tiny random student two-digit addition from traces.

The student (tests/tiny_model.py: 2 layers, hidden 128, digits as single tokens as in Qwen2.5 and
the R1 distills) is trained by the real CLI on rule-generated traces that work the sum out column
by column in ``<think>`` (ones with their carry, then tens) and box the answer, digits in their
natural order. It is then decoded greedily through the ``hf`` engine on problems it never saw; the
boxed answer must be exactly the sum. A random model gets none right, and one trained too little
(or on broken masks, packing or losses) stays well below the bar.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
from conftest import run_still

pytest.importorskip("torch")
pytest.importorskip("transformers")

TRAIN_PROBLEMS = 800  # a few hundred traces, as the issue asks
HELD_OUT = 100
BAR = 90  # the bar: >= 90% exact answers on held-out problems
# problem split, student weights, data order: STILL_LEARNS_SEED=1 re-runs the test on another draw
SEED = int(os.environ.get("STILL_LEARNS_SEED", "0"))
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def addition_trace(a: int, b: int) -> str:
    """Column addition as a person writes it: ones (with the carry), tens, then the boxed sum."""
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    return (
        f"<think>\n{a % 10} + {b % 10} = {ones}, write {ones % 10}, carry {carry}\n"
        f"{a // 10} + {b // 10} + {carry} = {tens}\n</think>\nThe answer is \\boxed{{{a + b}}}."
    )


def test_addition_trace_is_right_and_natural() -> None:
    assert addition_trace(47, 38) == (
        "<think>\n7 + 8 = 15, write 5, carry 1\n4 + 3 + 1 = 8\n</think>\nThe answer is \\boxed{85}."
    )
    for a in range(10, 100):
        for b in range(10, 100):
            think, answer = addition_trace(a, b).split("</think>")
            tens = think.strip().splitlines()[-1].split(" = ")[1]
            ones = think.split("write ")[1].split(",")[0]
            assert int(tens + ones) == a + b == int(BOXED.findall(answer)[-1])


def _answer(text: str) -> str | None:
    found = BOXED.findall(text.split("</think>")[-1])
    return found[-1].strip() if found else None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2 CPU-minutes; room for a box shared with other jobs
def test_it_learns_two_digit_addition(tmp_path: Path) -> None:
    """A tiny random student trained with sft gets >= 90 of 100 held-out sums exactly right."""
    from tiny_model import build_tiny_model

    from still.core.engines import GenerationRequest, SamplingParams, open_engine

    problems = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(SEED).shuffle(problems)
    train_set, held_out = problems[:TRAIN_PROBLEMS], problems[-HELD_OUT:]
    assert not set(train_set) & set(held_out)
    data = tmp_path / "train.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i, (a, b) in enumerate(train_set):
            row = {"id": f"t{i}", "query": f"What is {a} + {b}?", "response": addition_trace(a, b)}
            f.write(json.dumps(row) + "\n")
    student = build_tiny_model(tmp_path / "student", seed=SEED, layers=2, hidden=128)
    out = tmp_path / "out"
    res = run_still(
        f"distill-train --model {student} --out {out} --lr 3e-3 --epochs 16 --batch-size 4 --max-length 256 "
        f"--warmup 0.05 --scheduler cosine --seed {SEED} --log-steps 50 {data}",
        env={"OMP_NUM_THREADS": "1"},  # a tiny model's ops are too small to share between threads
        timeout=3600,
    )
    losses = [json.loads(line)["loss"] for line in res.lines()]
    assert losses and losses[-1] < losses[0] / 10, losses

    params = SamplingParams(temperature=0.0, max_tokens=64)
    requests = [
        GenerationRequest(
            messages=({"role": "user", "content": f"What is {a} + {b}?"},), query_id=f"{a}+{b}", params=params
        )
        for a, b in held_out
    ]
    wrong = []
    with open_engine("hf", str(out), device="cpu", batch_size=50) as engine:
        for request, result in engine.generate(requests):
            a, b = map(int, request.query_id.split("+"))
            if _answer(result.text) != str(a + b):
                wrong.append((request.query_id, result.text))
    right = HELD_OUT - len(wrong)
    assert right >= BAR, f"{right}/{HELD_OUT} held-out sums right; for example {wrong[:3]}"
