"""Benchmarks given as Parquet files (the `parquet` extra: pyarrow)."""

from __future__ import annotations

import json

from conftest import data_file, run_still


def test_parquet_benchmark_file(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in data_file("benchmarks/aime24.jsonl").open()]
    table = pa.table({"id": [str(r["id"]) for r in rows], "problem": [r["problem"] for r in rows]})
    path = tmp_path / "aime24.parquet"
    pq.write_table(table, path)
    planted = rows[3]["problem"]
    data = "".join(
        json.dumps({"id": i, "query": q}) + "\n"
        for i, q in enumerate(["Compute the sum of the first ten primes.", planted, "What is 2 + 2?"])
    )
    res = run_still(["decontam", "--against", f"aime24={path}", "--mark"], stdin=data)
    hits = [json.loads(line)["decontam"] for line in res.lines()]
    assert [len(h) > 0 for h in hits] == [False, True, False]
    assert hits[1][0]["benchmark"] == "aime24" and hits[1][0]["item"] == str(rows[3]["id"])


def test_broken_parquet_is_bad_input(tmp_path) -> None:
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1 not really")
    res = run_still(["decontam", "--against", str(path)], stdin='{"query": "x"}\n', code=3)
    assert "cannot read Parquet" in res.stderr and "Traceback" not in res.stderr
