"""The streaming JSONL core through a real command: bad input, policies, atomic output, pipes."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import run_still

GOOD = b'{"id": "a", "query": "first question here"}\n{"id": "b", "query": "second question here"}\n'


@pytest.mark.parametrize(
    "bad, message",
    [
        (b'{"id": "x", "query": "trunc', "invalid JSON"),
        (b'{"query": "\xff\xfe bad bytes"}', "invalid UTF-8"),
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b'"just a string"', "expected a JSON object, got str"),
        (b"", "empty line"),
        (b"   ", "empty line"),
    ],
)
def test_malformed_line_names_source_and_line(bad: bytes, message: str) -> None:
    data = GOOD + bad + b"\n" + GOOD
    res = run_still("dedup --exact-only", stdin=data, code=3)
    assert f"<stdin>:3: {message}" in res.stderr
    assert "Traceback" not in res.stderr


def test_malformed_line_in_named_file(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD + b"{oops}\n")
    res = run_still(["dedup", "--exact-only", str(path)], code=3)
    assert f"{path}:3: invalid JSON" in res.stderr


def test_huge_line_is_rejected_without_holding_it() -> None:
    big = b'{"query": "' + b"x" * (50 * 1024 * 1024) + b'"}\n'
    res = run_still("dedup --exact-only", stdin=GOOD + big + GOOD, code=3)
    assert "<stdin>:3: line longer than 16 MiB" in res.stderr


def test_debug_shows_traceback() -> None:
    res = run_still("dedup --exact-only --debug", stdin=GOOD + b"{oops}\n", code=3)
    assert "Traceback" in res.stderr and "<stdin>:3:" in res.stderr


def test_skip_and_quarantine_count_bad_lines(tmp_path) -> None:
    data = GOOD + b"{oops}\n[1]\n" + b'{"query": "third question here"}\n'
    res = run_still("dedup --exact-only --on-error skip", stdin=data)
    assert len(res.lines()) == 3
    assert "read 5, written 3, dropped 0, errors 2" in res.stderr
    q = tmp_path / "bad.jsonl"
    stats = tmp_path / "stats.json"
    res = run_still(["dedup", "--exact-only", f"--on-error=quarantine={q}", "--stats", str(stats)], stdin=data)
    assert q.read_bytes() == b"{oops}\n[1]\n"
    summary = json.loads(stats.read_text())
    assert summary["read"] == 5 and summary["written"] == 3 and sum(summary["errors"].values()) == 2


def test_missing_field_follows_policy() -> None:
    data = GOOD + b'{"id": "c", "text": "no query here"}\n'
    res = run_still("dedup --exact-only", stdin=data, code=3)
    assert "<stdin>:3: no query field" in res.stderr
    res = run_still("dedup --exact-only --on-error skip", stdin=data)
    assert len(res.lines()) == 2 and "errors 1 (no query field" in res.stderr


def test_gzip_and_multiple_inputs(tmp_path) -> None:
    a = tmp_path / "a.jsonl.gz"
    with gzip.open(a, "wb") as f:
        f.write(GOOD)
    b = tmp_path / "b.jsonl"
    b.write_bytes(b'{"id": "c", "query": "third question here"}\n')
    res = run_still(["dedup", "--exact-only", str(a), str(b)])
    assert [json.loads(x)["id"] for x in res.lines()] == ["a", "b", "c"]


def test_unknown_fields_pass_through_byte_for_byte() -> None:
    line = b'{"z": 1e5, "query": "caf\\u00e9 q", "big": 123456789012345678901234567890, "a": [1.50, {"k": null}]}\n'
    res = run_still("dedup", stdin=line)
    assert res.stdout == line


def test_output_file_is_atomic(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    run_still(["dedup", "--exact-only", "-o", str(out)], stdin=GOOD + b"{oops}\n", code=3)
    assert out.read_text() == "previous\n"
    assert list(tmp_path.iterdir()) == [out]
    run_still(["dedup", "--exact-only", "-o", str(out)], stdin=GOOD)
    assert out.read_bytes() == GOOD
    gz = tmp_path / "out.jsonl.gz"
    run_still(["dedup", "--exact-only", "-o", str(gz)], stdin=GOOD)
    assert gzip.decompress(gz.read_bytes()) == GOOD


def test_broken_pipe_is_quiet() -> None:
    lines = b"".join(b'{"query": "question number %d here"}\n' % i for i in range(50000))
    proc = subprocess.run(
        f"{sys.executable} -m still dedup --exact-only | head -1",
        shell=True,
        input=lines,
        capture_output=True,
        executable="/bin/bash",
    )
    assert proc.stdout.count(b"\n") == 1
    assert proc.stderr == b"", proc.stderr.decode()


def test_summary_and_quiet() -> None:
    res = run_still("dedup --exact-only", stdin=GOOD + GOOD)
    assert "still dedup: read 4, written 2, dropped 2 (exact duplicate 2), errors 0" in res.stderr
    res = run_still("dedup --exact-only -q", stdin=GOOD + GOOD)
    assert res.stderr == ""


def test_shard_parts_cover_the_input_once() -> None:
    data = b"".join(b'{"query": "question %d about sets"}\n' % (i % 40) for i in range(120))
    whole = run_still("dedup --exact-only", stdin=data).lines()
    parts = []
    for i in range(3):
        res = run_still(["dedup", "--exact-only", "--shard", f"{i}/3"], stdin=data)
        assert "other shard" in res.stderr
        parts += res.lines()
    assert sorted(parts) == sorted(whole)
    run_still("dedup --shard 3/3", stdin=data, code=2)


def test_dotted_query_field_and_derived_ids(tmp_path) -> None:
    rows = [
        {"meta": {"turns": [{"text": "What is 2+2?"}]}},
        {"meta": {"turns": [{"text": "what   is 2+2?"}]}},
        {"meta": {"turns": [{"text": "What is 2+3?"}]}},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    res = run_still(["dedup", "--exact-only", "--query-field", "meta.turns.0.text"], stdin=data)
    assert len(res.lines()) == 2
    clusters = tmp_path / "c.jsonl"
    run_still(["dedup", "--exact-only", "--query-field", "meta.turns.0.text", "--clusters", str(clusters)], stdin=data)
    (line,) = clusters.read_text().splitlines()
    cluster = json.loads(line)
    # ids derived from the normalised query: the same for both spellings
    assert cluster["representative"]["id"] == cluster["members"][0]["id"]
    assert cluster["representative"]["id"].startswith("q") and len(cluster["representative"]["id"]) == 17


def test_fields_library_rules() -> None:
    from still.core.fields import Fields, derive_id
    from still.core.jsonl import Record

    chat = Record(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
                {"role": "assistant", "content": "a2"},
            ]
        },
        None,
        "<t>",
        1,
    )
    fields = Fields()
    assert fields.query(chat) == "first\n\nsecond"
    assert fields.response(chat) == "a2"
    assert fields.record_id(chat) == derive_id("first\n\nsecond")
    assert derive_id("Hello  World") == derive_id("hello world")
    problem = Record({"problem": "p", "id": 7}, None, "<t>", 2)
    assert fields.query(problem) == "p" and fields.record_id(problem) == "7"


def test_lines_across_read_buffer_edges_pass_through_unchanged(tmp_path) -> None:
    # lines shorter and longer than the 64 KiB read buffer, so some straddle its edges; the last
    # line has no newline (one is added)
    sizes = [10, 1 << 20, (1 << 20) - 40, 3 << 20, 5, 700_000, 700_000, 3000, (1 << 16) - 30, 1 << 16]
    rows = [json.dumps({"id": str(i), "query": "q" * n}).encode() + b"\n" for i, n in enumerate(sizes)]
    data = b"".join(rows) + b'{"id": "last"}'
    assert run_still("sample -q", stdin=data).stdout == data + b"\n"
    plain, packed = tmp_path / "in.jsonl", tmp_path / "in.jsonl.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    assert run_still(["sample", "-q", str(plain), str(packed)]).stdout == (data + b"\n") * 2
    # lines over the limit are skipped whole wherever they fall; the reader stays in step
    res = run_still(["sample", "--max-line-mb", "0.5", "--on-error", "skip", str(plain)])
    assert res.stdout == rows[0] + rows[4] + rows[7] + rows[8] + rows[9] + b'{"id": "last"}\n'
    assert "errors 5 (line longer than 0.5 MiB 5)" in res.stderr


def test_output_to_a_device_writes_through(tmp_path) -> None:
    # -o onto a FIFO or device must write into it, not rename a temporary file over it
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    run_still(["dedup", "--exact-only", "-o", str(fifo)], stdin=GOOD)
    assert reader.communicate(timeout=30)[0] == GOOD
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    before = os.stat(os.devnull)
    run_still(["dedup", "--exact-only", "-o", os.devnull], stdin=GOOD)
    after = os.stat(os.devnull)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
