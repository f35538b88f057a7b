"""``still generate`` end to end on the tiny model: output lines, order, seeds, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, run_still


def _queries(path: Path, n: int) -> Path:
    lines = [
        orjson.dumps({"id": f"q{i}", "query": f"What is {i} + {2 * i}?" + " and" * (i % 5), "answer": str(3 * i)})
        for i in range(n)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _keys(lines: list[bytes]) -> list[tuple[str, str, int]]:
    out = []
    for line in lines:
        d = orjson.loads(line)
        out.append((d["id"], d["model"], d["sample_idx"]))
    return out


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), seed=1, layers=1)


def test_generate_lines_order_fields_and_two_models(tiny_model: Path, second_model: Path, tmp_path: Path) -> None:
    queries = _queries(tmp_path / "q.jsonl", 3)
    args = f"generate -m {tiny_model} -m {second_model} -k 2 --max-tokens 6 --seed 5 --stats {tmp_path}/s.json"
    res = run_still(args + f" {queries}")
    lines = res.lines()
    models = [str(tiny_model), str(second_model)]
    assert _keys(lines) == [(f"q{i}", m, s) for i in range(3) for m in models for s in range(2)]
    first = orjson.loads(lines[0])
    assert first["query"] == "What is 0 + 0?" and first["answer"] == "0"  # input fields kept
    assert first["finish_reason"] == "length" and first["n_tokens"] == 6 and first["prompt_tokens"] > 0
    assert first["sampling"] == {"temperature": 0.6, "top_p": 0.95, "max_tokens": 6}
    from still.core.engines import request_seed

    assert [orjson.loads(x)["seed"] for x in lines[:2]] == [request_seed(5, "q0", 0), request_seed(5, "q0", 1)]
    # the two teachers really answer differently
    assert orjson.loads(lines[0])["response"] != orjson.loads(lines[2])["response"]
    stats = orjson.loads((tmp_path / "s.json").read_bytes())
    assert stats["read"] == 3 and stats["written"] == 3 and stats["responses"] == 12
    assert stats["finish_reasons"] == {"length": 12} and stats["completion_tokens"] == 72
    assert "written 3" in res.stderr


def test_generate_bad_input_and_usage_errors(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "query": "hi"}\n{"id": "b"}\n{"id": "a", "query": "again"}\n')
    res = run_still(f"generate -m {tiny_model} --max-tokens 2 {bad}", code=3)
    assert f"{bad}:2: no query field" in res.stderr and "Traceback" not in res.stderr
    res = run_still(f"generate -m {tiny_model} --max-tokens 2 --on-error skip --stats {tmp_path}/s.json {bad}")
    assert len(res.lines()) == 1
    stats = orjson.loads((tmp_path / "s.json").read_bytes())
    assert stats["errors"] == {"duplicate id 'a'": 1, "no query field": 1}
    run_still(f"generate -m {tiny_model} -k 2 --until-verified 3 {bad}", code=2)
    run_still(f"generate -m {tiny_model} --resume {bad}", code=2)
    run_still(f"generate -m x --engine openai {bad}", code=2)


def test_until_verified_stops_at_the_first_pass(tiny_model: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        '{"id": "right", "query": "1+6?", "answer": "7"}\n{"id": "wrong", "query": "1+7?", "answer": "8"}\n'
    )
    # the prefill puts an answer in every response; the random model's continuation decides nothing
    args = f"generate -m {tiny_model} --until-verified 3 --max-tokens 40 --prefill '\\boxed{{7}} '"
    args += " --stop ' ' --stop boxed --stop '}'"
    lines = [orjson.loads(x) for x in run_still(f"{args} {queries}").lines()]
    assert [(d["id"], d["sample_idx"], d["verify"]["verdict"]) for d in lines] == [
        ("right", 0, "correct"),
        ("wrong", 0, "wrong"),
        ("wrong", 1, "wrong"),
        ("wrong", 2, "wrong"),
    ]
    assert lines[0]["response"].startswith("\\boxed{7} ")


def _journal_lines(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_output(tiny_model: Path, tmp_path: Path) -> None:
    queries = _queries(tmp_path / "q.jsonl", 6)
    out = tmp_path / "out.jsonl"
    journal = Path(str(out) + ".journal")
    common = f"generate -m {tiny_model} -k 3 --max-tokens 16 --seed 9 --window 2 {queries}"
    argv = [sys.executable, "-m", "still", *common.split(), "--batch-size", "1", "-o", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 240
    while _journal_lines(journal) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and 4 <= _journal_lines(journal) < 18
    run_still(f"{common} -o {out}", code=2)  # a journal and no --resume: refused
    run_still(f"generate -m {tiny_model} -k 2 --max-tokens 16 --seed 9 {queries} -o {out} --resume", code=2)
    res = run_still(f"{common} --batch-size 8 -o {out} --resume --stats {tmp_path}/s.json")
    assert not journal.exists()
    lines = out.read_bytes().splitlines()
    keys = _keys(lines)
    assert keys == [(f"q{i}", str(tiny_model), s) for i in range(6) for s in range(3)]  # no duplicate, no gap
    assert orjson.loads((tmp_path / "s.json").read_bytes())["resumed"] >= 4
    fresh = run_still(f"{common} --batch-size 8")
    assert fresh.stdout == out.read_bytes(), res.stderr
