"""still dedup --workers N: byte-identical output to one process for every N and block size."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_still

from still.core.dedup import DedupConfig, dedup
from still.core.jsonl import ErrorPolicy, Record, read_records
from still.core.stats import RunStats

sys.path.insert(0, str(ROOT / "bench"))
import corpus  # noqa: E402


@pytest.fixture(autouse=True)
def _wait_for_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool starts in the background and the command signs blocks itself until it is up: on
    these small inputs it would sign them all. Wait for it (the commands run here inherit this)."""
    monkeypatch.setenv("STILL_DEDUP_WAIT_FOR_POOL", "1")


def _lines(n: int = 900, seed: int = 5) -> list[bytes]:
    """Planted near duplicates, plus multi-sample records (k responses per query) and exact copies."""
    rng = random.Random(seed)
    docs = list(corpus.documents(n, words=40, dup_rate=0.3, seed=seed))
    out = []
    for i, d in enumerate(docs):
        rec = {"id": d["id"], "query": d["query"], "response": f"answer {rng.randrange(3)}", "score": rng.random()}
        out.append(json.dumps(rec).encode() + b"\n")
        if i % 50 == 0:
            out.append(out[-1])  # an exact copy
    return out


def _run(lines: list[bytes], **kw: object) -> bytes:
    records = [Record(json.loads(raw), raw, "<test>", i + 1) for i, raw in enumerate(lines)]
    stats = RunStats("dedup")
    stats.read = len(records)
    out = b"".join(r.to_bytes() for r in dedup(records, DedupConfig(**kw), stats))  # type: ignore[arg-type]
    stats.written = out.count(b"\n")
    stats.check_balance()
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mark": True},
        {"keep": "longest"},
        {"key": "query", "max_per_key": 2, "mark": True},
        {"keep": "max:score", "max_per_key": 3},
        {"near": False},
    ],
    ids=["first", "mark", "longest", "max-per-key", "max-field", "exact-only"],
)
def test_workers_give_the_same_bytes_for_every_n_and_block_size(options: dict[str, object]) -> None:
    lines = _lines()
    for block_size, workers in ((7, 3), (256, 2)):
        one = _run(lines, block_size=block_size, **options)
        assert 0 < one.count(b"\n") <= len(lines)
        assert _run(lines, block_size=block_size, workers=workers, **options) == one, (block_size, workers)


def test_workers_with_state_and_clusters_match_one_process(tmp_path: Path) -> None:
    lines = _lines(600, seed=11)
    first, second = b"".join(lines[:300]), b"".join(lines[300:])
    results = []
    for workers in ("1", "2", "0"):
        state, clusters = tmp_path / f"state-{workers}", tmp_path / f"clusters-{workers}.jsonl"
        common = ["dedup", "--workers", workers, "--block-size", "64", "--state", str(state)]
        a = run_still([*common, "--mark"], stdin=first).stdout
        b = run_still([*common, "--mark", "--clusters", str(clusters)], stdin=second).stdout
        results.append((a, b, clusters.read_bytes()))
    assert results[0] == results[1] == results[2]
    assert b'"representative":false' in results[0][1]  # the second run found duplicates of the first


def test_workers_is_validated() -> None:
    res = run_still(["dedup", "--workers", "-1"], stdin="", code=2)
    assert "--workers" in res.stderr


def _quarantined(data: bytes, tmp_path: Path, workers: str) -> tuple[bytes, bytes, object, object, object]:
    """Output, quarantined lines, error and drop counts and lines read of one run."""
    quarantine, stats = tmp_path / f"q{workers}.jsonl", tmp_path / f"s{workers}.json"
    res = run_still(
        ["dedup", "--workers", workers, "--block-size", "16", "--on-error", f"quarantine={quarantine}"]
        + ["--stats", str(stats)],
        stdin=data,
    )
    summary = json.loads(stats.read_text())
    return res.stdout, quarantine.read_bytes(), summary["errors"], summary["dropped"], summary["read"]


def test_workers_find_key_texts_and_report_records_without_one_in_order(tmp_path: Path) -> None:
    """The workers parse the lines and find the key texts; a record without one goes to the
    --on-error policy as with one process (same count, same quarantined lines, same order)."""
    lines = _lines(300, seed=2)
    for at in (5, 6, 140, 299):  # one without a query, the next without any text
        lines.insert(at, json.dumps({"id": f"bad{at}", "response": "r"}).encode() + b"\n")
    data = b"".join(lines)
    results = [_quarantined(data, tmp_path, workers) for workers in ("1", "2")]
    assert results[0] == results[1]
    assert results[0][1].count(b"\n") == 4 and sum(results[0][2].values()) == 4
    res = run_still(["dedup", "--workers", "2", "--block-size", "16"], stdin=data, code=3)
    assert "<stdin>:6: no query field" in res.stderr and "Traceback" not in res.stderr


def test_lines_are_checked_where_they_are_parsed_with_the_readers_messages(tmp_path: Path) -> None:
    """The streaming path reads lines unparsed and its workers (or its one process) parse and
    check them: broken lines get the reader's own messages and counts, in input order, for any N;
    the first one fails the run with `source:line: what is wrong` as in any other command."""
    lines = _lines(200, seed=4)
    broken = {7: b'{"query": "cut off\n', 8: b"\n", 60: b"[1, 2]\n", 61: b"null\n", 150: b'{"id": "x"}\n'}
    for at in sorted(broken, reverse=True):
        lines.insert(at, broken[at])
    data = b"".join(lines)
    results = [_quarantined(data, tmp_path, workers) for workers in ("1", "2", "3")]
    assert results[0] == results[1] == results[2]
    assert results[0][1] == b"".join(broken[at] for at in sorted(broken))  # input order
    # the counts a command parsing in its reader gives (--keep longest reads everything first)
    reader = tmp_path / "reader.json"
    run_still(["dedup", "--keep", "longest", "--on-error", "skip", "--stats", str(reader)], stdin=data)
    assert json.loads(reader.read_text())["errors"] == results[0][2]
    for workers in ("1", "2"):
        failed = run_still(["dedup", "--workers", workers, "--block-size", "16"], stdin=data, code=3)
        by_reader = run_still(["dedup", "--keep", "longest"], stdin=data, code=3)
        assert failed.stdout == b"" or failed.stdout.count(b"\n") < 8
        assert failed.stderr == by_reader.stderr and "<stdin>:8: invalid JSON" in failed.stderr, failed.stderr


@pytest.mark.parametrize(
    "distinct, stamps",
    [(50, None), (5000, None), (5000, 9)],
    ids=["every-query-hits", "filter-rejects-most", "filter-stamps-wrap-round"],
)
def test_worker_and_deciding_process_together_find_every_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distinct: int, stamps: int | None
) -> None:
    """A worker searches the published runs of a snapshot, the deciding process the representatives
    added since (from the recent blocks, or from every run when those do not reach back far
    enough): together, exactly what one search of the whole index finds. Also when the recent
    blocks' filter turns most queries away, and when its block stamps have wrapped round many
    times (a stamp count just above the blocks searched)."""
    import numpy as np

    from still.core import lshindex
    from still.core.lshindex import KeyIndex, load_run, lookup_runs

    if stamps is not None:
        monkeypatch.setattr(lshindex, "_STAMPS", stamps)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, distinct, size=(3000, 4), dtype=np.uint64).astype(np.uint32)
    for recent in (0, 3, 40) if stamps is None else (8,):
        index = KeyIndex(4, np.uint32, str(tmp_path), f"t{recent}", recent_blocks=recent)
        whole = KeyIndex(4, np.uint32)
        snapshots: list[tuple[int, list[tuple[str, int]]]] = []
        for block, start in enumerate(range(0, 2400, 100)):
            ids = np.arange(start, start + 100)
            if block % 5 == 0:
                snapshots.append((start, index.snapshot()))
            index.add(keys[start : start + 100], ids)
            whole.add(keys[start : start + 100], ids)
        query = keys[2400:]
        expected = whole.lookup(query)
        for since, published in snapshots:
            worker = lookup_runs([load_run(p, 4, np.dtype(np.uint32)) for p in published], query, np.dtype(np.uint32))
            here = index.lookup(query, since)
            found = {row: worker.get(row, set()) | here.get(row, set()) for row in set(worker) | set(here)}
            assert found == expected, (recent, since)
            assert all(i < since for hits in worker.values() for i in hits)
            index.release(published)
        live = {path for path in index.run_files if path}
        assert {str(p) for p in tmp_path.glob(f"t{recent}-*.run")} == live  # released runs are deleted


def test_workers_leave_no_files_behind(tmp_path: Path) -> None:
    """Spilled shingle sets and published index runs live in a temporary folder that goes away,
    whether the run succeeds or fails."""
    data = b"".join(_lines(300, seed=9))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    run_still(["dedup", "--workers", "2", "--block-size", "16"], stdin=data, env=env)
    assert list(scratch.iterdir()) == []
    run_still(["dedup", "--workers", "2", "--block-size", "16"], stdin=data + b"not json\n" + data, env=env, code=3)
    assert list(scratch.iterdir()) == []


# run in a process of its own: it forks workers the way the command does (prestart_workers)
_RING_SCRIPT = r"""
import json, sys
from still.core import dedup_features as features
features._SLOT_BYTES = int(sys.argv[1])
features.prestart_workers(2)
used = {"ring": 0, "file": 0}
take = features._map_spilled
def counted(feats, ring):
    if feats.in_ring is not None:
        used["ring"] += 1
    elif feats.spilled is not None:
        used["file"] += 1
    take(feats, ring)
features._map_spilled = counted
from still.core.dedup import DedupConfig, dedup
from still.core.jsonl import Record
from still.core.stats import RunStats
lines = open(sys.argv[2], "rb").readlines()
def run(workers, **options):
    records = [Record(json.loads(raw), raw, "<test>", i + 1) for i, raw in enumerate(lines)]
    out = dedup(records, DedupConfig(block_size=64, workers=workers, **options), RunStats("dedup"))
    return b"".join(r.to_bytes() for r in out)
print(json.dumps({"same": run(1) == run(2) and run(1, keep="longest") == run(2, keep="longest"), **used}))
"""


def test_blocks_too_large_for_their_ring_slot_go_through_a_file(tmp_path: Path) -> None:
    """Forked workers put a block's arrays in its slot of memory shared with the command; a block
    that does not fit goes through a file. Blocks of short and long texts in turn, with slots that
    hold only the short ones: both ways in one run, the same bytes as one process."""
    short = _lines(320, seed=13)
    long = [
        json.dumps({"id": d["id"], "query": d["query"]}).encode() + b"\n"
        for d in corpus.documents(320, words=400, dup_rate=0.3, seed=14)
    ]
    lines = [line for start in range(0, 320, 64) for line in short[start : start + 64] + long[start : start + 64]]
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"".join(lines))
    res = subprocess.run(
        [sys.executable, "-c", _RING_SCRIPT, str(64 << 10), str(data)], capture_output=True, timeout=120
    )
    assert res.returncode == 0, res.stderr.decode()
    found = json.loads(res.stdout)
    assert found["same"], found
    assert found["ring"] > 0 and found["file"] > 0, found


def test_a_ring_slot_holds_its_arrays_and_nothing_past_its_end() -> None:
    import numpy as np

    from still.core.dedup_features import SpillRing

    ring = SpillRing.create(3)
    fill = np.frombuffer(ring.memory, np.uint8)
    fill[:] = 0xAB
    arrays = {
        "sets": np.arange(5, dtype=np.uint64),
        "keys": np.arange(6, dtype=np.uint32).reshape(3, 2),  # 24 bytes: the next starts 8-aligned
        "empty": np.empty((4, 0), dtype=np.uint32),
    }
    placed = ring.put(1, arrays)
    assert placed is not None
    taken = ring.take(placed)
    for name, array in arrays.items():
        assert taken[name].dtype == array.dtype and taken[name].shape == array.shape
        assert np.array_equal(taken[name], array)
    used = 5 * 8 + 24
    start = ring.slot_words * 8
    assert (fill[:start] == 0xAB).all() and (fill[start + used :] == 0xAB).all()  # the other slots untouched
    assert ring.put(2, {"big": np.zeros(ring.slot_words + 1, dtype=np.uint64)}) is None
    assert ring.put(2, {"a": np.zeros(ring.slot_words, dtype=np.uint64), "b": np.zeros(1, np.uint8)}) is None
    assert ring.put(2, {"whole": np.ones(ring.slot_words, dtype=np.uint64)}) is not None
    assert (fill[:start] == 0xAB).all()  # slot 2 filled to its end: slot 0 as it was, slot 1 too
    assert np.array_equal(ring.take(placed)["sets"], arrays["sets"])


_STEAL_SCRIPT = r"""
import json, time
from still.core import dedup_features as features
from still.core.dedup import DedupConfig
def slow(seq, job, work):
    time.sleep(0.3)
    return ("pool", work[0])
features.prestart_workers(2)
source = features.FeatureSource(DedupConfig().feature_params(), 2)
submitted = []
submit = source.pool.submit
def counted(fn, seq, job, work):
    submitted.append(work[0])
    return submit(fn, seq, job, work)
source.pool.submit = counted
try:
    blocks = ((n, n, None) for n in range(12))
    got = list(source._in_order(blocks, lambda work: ("here", work), slow))
finally:
    source.close()
print(json.dumps({"order": [n for n, _ in got], "values": [v for _, (_, v) in got],
                  "here": [n for n, (where, _) in got if where == "here"], "submitted": submitted}))
"""


def test_blocks_no_worker_has_started_are_signed_by_the_command_rather_than_waited_for() -> None:
    """With every place in flight taken (and at the end of the input), the command signs the newest
    block the pool has not started instead of waiting for the oldest: results still come in order."""
    res = subprocess.run([sys.executable, "-c", _STEAL_SCRIPT], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    found = json.loads(res.stdout)
    assert found["order"] == found["values"] == list(range(12))
    taken_back = set(found["submitted"]) & set(found["here"])
    assert taken_back, found


def test_workers_import_the_installed_still_whatever_the_working_directory(tmp_path: Path) -> None:
    """The workers' server runs as `python -c`, whose sys.path starts with its working directory:
    started from a folder holding another `still/` (a second checkout), it imported that one."""
    decoy = tmp_path / "still"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise RuntimeError('the decoy still package was imported')\n")
    data = b"".join(_lines(100, seed=3))
    script = Path(sys.executable).parent / "still"  # `python -m` would put the folder first itself
    if not script.exists():
        pytest.skip("no still console script next to this Python")
    res = subprocess.run(
        [str(script), "dedup", "--workers", "2", "--block-size", "16"],
        input=data,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == run_still(["dedup", "--block-size", "16"], stdin=data).stdout
    # the library (no command to fork its workers early) starts a forkserver pool instead
    caller = tmp_path / "elsewhere" / "call.py"
    caller.parent.mkdir()
    caller.write_text(
        "import sys\n"
        "from still.core.dedup import DedupConfig, dedup\n"
        "from still.core.jsonl import read_records\n"
        "from still.core.stats import RunStats\n"
        "if __name__ == '__main__':\n"
        "    stats = RunStats('dedup')\n"
        "    records = read_records(['-'], stats)\n"
        "    for rec in dedup(records, DedupConfig(workers=2, block_size=16), stats):\n"
        "        sys.stdout.buffer.write(rec.to_bytes())\n"
    )
    res = subprocess.run(
        [str(Path(sys.executable).parent / "python"), str(caller)],
        input=data,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        env={**os.environ, "STILL_DEDUP_WAIT_FOR_POOL": "1"},
    )
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == run_still(["dedup", "--block-size", "16"], stdin=data).stdout


def test_workers_read_blocks_of_plain_files_where_they_are(tmp_path: Path) -> None:
    """Blocks of a plain file go to the workers as stretches of that file (they read the lines
    themselves); every other input (stdin, gzip, a line too long, a file given twice, a last line
    without a newline) gives the same bytes as one process."""
    import gzip

    lines = _lines(400, seed=9)
    first = tmp_path / "a.jsonl"
    too_long = b'{"id": "long", "query": "' + b"x" * 1_100_000 + b'"}\n'
    first.write_bytes(b"".join(lines[:120]) + too_long + b"".join(lines[120:250]))
    second = tmp_path / "b.jsonl"
    second.write_bytes(b"".join(lines[250:]).rstrip(b"\n"))  # no newline after the last line
    packed = tmp_path / "c.jsonl.gz"
    packed.write_bytes(gzip.compress(b"".join(lines[100:200])))
    again = tmp_path / "d.jsonl"  # given twice in a row: a block holds its end and its start
    again.write_bytes(b"".join(lines[300:345]))
    inputs = [str(first), str(second), str(packed), str(again), str(again)]
    common = ["dedup", "--max-line-mb", "1", "--on-error", "skip", "--block-size", "32"]
    one = run_still([*common, "--workers", "1", *inputs])
    assert "errors 1 (line longer than 1 MiB 1)" in one.stderr, one.stderr
    # the reader's offsets: each line where it is in its plain file, none after a line too long
    # (not counted through) and none in a gzip file
    stats = RunStats("dedup")
    seen = {name: [] for name in inputs[:3]}
    for rec in read_records(inputs[:3], stats, ErrorPolicy("skip"), 1 << 20, parse=False):
        seen[rec.source].append((rec.offset, rec.raw))  # type: ignore[attr-defined]
    raw_first = first.read_bytes()
    assert all(raw_first[o : o + len(raw)] == raw for o, raw in seen[str(first)][:120])
    assert {o for o, _ in seen[str(first)][120:]} == {-1}
    assert (seen[str(second)][-1][0], seen[str(second)][-1][1][-1:]) == (len(b"".join(lines[250:-1])), b"\n")
    assert {o for o, _ in seen[str(packed)]} == {-1}
    for workers in ("2", "3"):
        assert run_still([*common, "--workers", workers, *inputs]).stdout == one.stdout
    fifo = tmp_path / "fifo"  # a named pipe has a name but no offsets
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(first.read_bytes(),))
    writer.start()
    piped = run_still([*common, "--workers", "2", str(fifo)])
    writer.join()
    assert piped.stdout == run_still([*common, "--workers", "1", str(first)]).stdout
    stdin = run_still([*common, "--workers", "2", "-"], stdin=first.read_bytes() + second.read_bytes())
    assert (
        stdin.stdout
        == run_still([*common, "--workers", "1", "-"], stdin=first.read_bytes() + second.read_bytes()).stdout
    )


def test_a_file_changed_under_a_worker_fails_the_run(tmp_path: Path) -> None:
    """A worker checks the length and hash of the stretch it reads against what this process read:
    a file rewritten in the meantime fails the run instead of giving another answer."""
    import xxhash

    from still.core.dedup_features import FileStretch
    from still.core.errors import StillError

    path = tmp_path / "in.jsonl"
    data = b"".join(_lines(20))
    path.write_bytes(data)
    stretch = FileStretch(str(path), 10, 500, xxhash.xxh3_64_intdigest(data[10:510]))
    assert stretch.read() == data[10:510]
    path.write_bytes(data[:100] + b"X" + data[101:])
    with pytest.raises(StillError, match="changed while still dedup was reading it"):
        stretch.read()
    path.write_bytes(data[:300])
    with pytest.raises(StillError, match="changed"):
        stretch.read()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_workers_end_quietly_with_the_command(tmp_path: Path, signum: int, code: int) -> None:
    """The workers are forked from the command: Ctrl-C or SIGTERM ends the command with its exit
    code and one line, and takes the workers (and their temporary files) with it."""
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"".join(_lines(3000, seed=1)))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "still", "dedup", "--workers", "3", "--block-size", "64", str(data)]
    # stdout is never read: the command blocks writing once the pipe is full, workers started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) >= 2
    time.sleep(0.5)
    os.killpg(proc.pid, signum)  # to every process of the group, as Ctrl-C or a kill of a job does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert b"Traceback" not in err and err.count(b"\n") <= 2, err
    time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert not list(tmp_path.glob("still-*"))
