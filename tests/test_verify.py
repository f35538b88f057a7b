"""still verify end to end: math, multiple choice and code records in one stream."""

from __future__ import annotations

import json

from conftest import run_still

ADD = {"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}


def _rows() -> list[dict]:
    good = "<think>easy</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "</think>\n```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    rows = []
    for i in range(6):
        rows.append({"id": f"m{i}", "query": "q", "answer": str(i), "response": f"</think> \\boxed{{{i}}}"})
        rows.append({"id": f"w{i}", "query": "q", "answer": str(i), "response": f"</think> \\boxed{{{i + 1}}}"})
        rows.append({"id": f"c{i}", "query": "add", "tests": ADD, "response": good if i % 2 else bad})
    rows.append({"id": "t", "query": "add", "tests": ADD, "response": good, "finish_reason": "length"})
    rows.append({"id": "mc", "query": "pick", "choices": ["1", "2", "3"], "answer": 1, "response": "Answer: B"})
    return rows


def test_mixed_stream_in_order_and_independent_of_workers() -> None:
    data = "".join(json.dumps(r) + "\n" for r in _rows())
    one = run_still("verify --workers 1", stdin=data)
    three = run_still("verify --workers 3", stdin=data)
    assert one.stdout == three.stdout
    out = [json.loads(x) for x in one.lines()]
    assert [o["id"] for o in out] == [r["id"] for r in _rows()]
    verdicts = {o["id"]: o["verify"]["verdict"] for o in out}
    assert all(verdicts[f"m{i}"] == "correct" and verdicts[f"w{i}"] == "wrong" for i in range(6))
    assert [verdicts[f"c{i}"] for i in range(6)] == ["wrong_answer", "pass"] * 3
    assert verdicts["t"] == "truncated" and verdicts["mc"] == "correct"
    assert "verdicts:" in one.stderr


def test_missing_fields_follow_the_error_policy() -> None:
    rows = [{"query": "q", "answer": "1", "response": "\\boxed{1}"}, {"query": "q", "response": "\\boxed{1}"}]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    res = run_still("verify", stdin=data, code=3)
    assert "<stdin>:2: no answer field (answer)" in res.stderr
    res = run_still("verify --on-error skip", stdin=data)
    assert len(res.lines()) == 1 and "errors 1 (no answer field" in res.stderr
