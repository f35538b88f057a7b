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


def test_a_comparison_over_its_cap_is_a_timeout_even_when_read_late() -> None:
    """The caller may be busy elsewhere (verify waits on a code run at the head of the queue)
    when a comparison finishes after its cap: it is still a timeout, not an answer that happened
    to be read in time. Before the fix, this read gave ``ok``. The cap is CPU time, so the
    verdicts do not depend on the machine's load either."""
    import time

    from still.core.procpool import KillablePool

    def burn(seconds: float) -> str:  # an expression that computes for `seconds` of CPU time
        return (
            "(lambda t: (lambda s: [0 for _ in iter(lambda: t.process_time() - s > "
            f"{seconds}, True)])(t.process_time()))(__import__('time')) and 'done'"
        )

    with KillablePool("builtins:eval", workers=1, timeout_s=0.5) as pool:
        task = pool.submit(burn(1.0))
        while pool.next_deadline() is None:  # handed to a started worker: its clock runs
            pool.pump(False)
            time.sleep(0.01)
        # The caller looks away until the answer (1.0 s of CPU, over the 0.5 s cap) is waiting.
        waited = time.monotonic()
        while not pool.workers[0].conn.poll(0) and time.monotonic() - waited < 60:
            time.sleep(0.05)
        while not task.done:
            pool.pump(True)
        assert task.status == "timeout"
        quick = pool.submit(burn(0.05))
        while not quick.done:
            pool.pump(True)
        assert quick.status == "ok" and quick.result == "done"


def test_math_caps_hold_while_a_code_run_is_pending() -> None:
    """A slow sandboxed code run at the head of the stream, behind it a comparison that never
    ends: the verdicts are those of each record alone (verify pumps the math pool at its
    deadlines while it waits on the code run)."""
    from still.core.jsonl import Record
    from still.core.stats import RunStats
    from still.core.verify import VerifyConfig, verify_records
    from still.core.verify_math import MathConfig

    slow = "</think>\n```python\nimport time\ntime.sleep(3)\nprint(3)\n```"
    rows = [
        {"id": "code", "tests": {"inputs": ["1 2\n"], "outputs": ["3\n"]}, "response": slow},
        {"id": "math", "answer": "3^{2\\cdot 9^{9}}", "response": "</think> \\boxed{9^{9^{9}}}"},
    ]
    records = [Record(r, json.dumps(r).encode(), "t", i + 1) for i, r in enumerate(rows)]
    stats = RunStats("verify")
    config = VerifyConfig(math=MathConfig(timeout_s=0.5, workers=1), code_timeout_s=6.0)
    out = [rec.data["verify"]["verdict"] for rec in verify_records(iter(records), config, stats)]
    assert out == ["pass", "timeout"]
