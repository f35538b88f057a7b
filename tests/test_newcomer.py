"""What a newcomer hits in the first hour (#17): dataset formats, config, files, signals, exit codes."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, data_file, run_still


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "You are helpful."},
        {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": "It is \\boxed{4}."},
    ],
    "answer": "4",
}


# ------------------------------------------------------------------ formats people have
def test_sharegpt_conversations_are_read_like_messages():
    res = run_still("verify", stdin=jsonl(SHAREGPT))
    assert json.loads(res.lines()[0])["verify"]["verdict"] == "correct"
    other = {**SHAREGPT, "conversations": [SHAREGPT["conversations"][1], {"from": "gpt", "value": "5"}]}
    res = run_still("dedup", stdin=jsonl(SHAREGPT, other))  # same human turn: one query
    assert len(res.lines()) == 1


def test_math_problem_solution_records():
    rec = {"problem": "What is 1+1?", "solution": "So it is \\boxed{2}.", "answer": "2"}
    res = run_still("verify", stdin=jsonl(rec))
    assert json.loads(res.lines()[0])["verify"]["verdict"] == "correct"
    wrong = {**rec, "solution": "So it is \\boxed{3}.", "response": "\\boxed{2}"}  # response wins
    assert json.loads(run_still("verify", stdin=jsonl(wrong)).lines()[0])["verify"]["verdict"] == "correct"


def test_missing_field_error_names_the_flag_and_the_keys():
    res = run_still("dedup", stdin=jsonl({"id": 1, "text": "hello", "meta": {}}), code=3)
    assert "<stdin>:1: no query field" in res.stderr
    assert "the record has id, text, meta" in res.stderr
    assert "--query-field PATH" in res.stderr and "--query-field text" in res.stderr
    assert "--on-error skip" in res.stderr  # how to go on


def test_long_line_error_names_max_line_mb():
    res = run_still("dedup --max-line-mb 0.001", stdin=jsonl({"query": "x" * 5000}), code=3)
    assert "--max-line-mb" in res.stderr


# ------------------------------------------------------------------ one mapping per pipeline
RENAMED = {"id": "a", "body": {"q": "the same question"}}


def test_field_mapping_from_environment():
    data = jsonl(RENAMED, {**RENAMED, "id": "b"})
    res = run_still("dedup", stdin=data, env={"STILL_QUERY_FIELD": "body.q"})
    assert len(res.lines()) == 1


def test_field_mapping_from_config_file_and_precedence(tmp_path: Path):
    data = jsonl(RENAMED, {**RENAMED, "id": "b"})
    (tmp_path / "still.toml").write_text('query-field = "body.q"\n[dedup]\nmax-per-key = 2\n')
    res = run_still("dedup", stdin=data, cwd=tmp_path)  # still.toml in the working directory
    assert len(res.lines()) == 2  # the [dedup] table: two per key
    res = run_still("dedup --max-per-key 1", stdin=data, cwd=tmp_path)  # flag > config
    assert len(res.lines()) == 1
    res = run_still("dedup", stdin=data, cwd=tmp_path, env={"STILL_QUERY_FIELD": "nope"}, code=3)  # env > config
    assert "looked for nope" in res.stderr
    other = tmp_path / "other.toml"
    other.write_text("[dedup]\nno-such-option = 1\n")
    res = run_still(["--config", str(other), "dedup"], stdin=data, code=2)
    assert "no-such-option" in res.stderr


def test_config_tables_reach_the_subcommands_of_a_group(tmp_path: Path):
    """dedup, eval and decontam have subcommands: [dedup] applies to each that has the option,
    [dedup.plan.sign] to one."""
    data = jsonl(RENAMED, {**RENAMED, "id": "b"})
    (tmp_path / "in.jsonl").write_text(jsonl({"id": "a", "body": {"q": "one two three four"}}))
    (tmp_path / "still.toml").write_text(
        'query-field = "body.q"\n[dedup]\nmax-per-key = 2\nngram = 3\n[dedup.plan.sign]\nbuckets = 3\n'
    )
    assert len(run_still("dedup run", stdin=data, cwd=tmp_path).lines()) == 2
    run_still("dedup plan sign --shard 0/1 plan in.jsonl", cwd=tmp_path)
    params = json.loads((tmp_path / "plan/sign/f00000/meta.json").read_text())["params"]
    assert (params["ngram"], params["buckets"], params["query_field"]) == (3, 3, "body.q")
    for table, message in [
        ("[dedup]\nnope = 1\n", "[dedup] nope: still dedup has no option --nope"),
        ("[dedup.plan.sign]\nnope = 1\n", "[dedup.plan.sign] nope: still dedup plan sign has no option --nope"),
        ("[dedup.plan.sgn]\nbuckets = 1\n", "still dedup plan has no subcommand sgn"),
    ]:
        (tmp_path / "still.toml").write_text(table)
        assert message in run_still("dedup", stdin=data, cwd=tmp_path, code=2).stderr


def test_verify_reads_code_tests_from_the_fallback_fields():
    kodcode = {
        "question": "Write f(x) returning x+1.",
        "response": "```python\ndef f(x):\n    return x + 1\n```",
        "test": "from solution import f\n\ndef test_f():\n    assert f(1) == 2\n",
    }
    res = run_still("verify", stdin=jsonl(kodcode))
    assert json.loads(res.lines()[0])["verify"]["verdict"] == "pass"
    res = run_still("verify", stdin=jsonl({"question": "q", "response": "r"}), code=3)
    assert "tests, test, test_code, input_output" in res.stderr


def test_math_verify_is_a_base_dependency():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("math-verify") for d in deps)


# ------------------------------------------------------------------ defaults that drop data
def multi_sample() -> str:
    rows = []
    for q in range(3):
        for k in range(4):  # responses 0, 1, 2, then 0 again: one exact copy per query
            rows.append({"id": f"r{q}{k}", "query": f"question number {q} of the set", "response": f"answer {k % 3}"})
    return jsonl(*rows)


def test_dedup_names_drop_reasons_and_warns_on_multi_sample_data(tmp_path: Path):
    stats = tmp_path / "stats.json"
    res = run_still(["dedup", "--stats", str(stats)], stdin=multi_sample())
    assert len(res.lines()) == 3
    summary = json.loads(stats.read_text())
    assert summary["dropped"] == {"exact duplicate": 3, "same query beyond --max-per-key": 6}
    assert "--max-per-key K" in res.stderr and "warning" in res.stderr
    res = run_still(["dedup", "--max-per-key", "4", "--stats", str(stats)], stdin=multi_sample())
    assert len(res.lines()) == 9  # every distinct response; the copies take no place
    assert json.loads(stats.read_text())["dropped"] == {"exact duplicate": 3}
    assert "warning" not in res.stderr


def test_sample_warns_when_ids_are_row_ids_and_groups_by_query_hash():
    res = run_still("sample --per-query 1", stdin=multi_sample())
    assert len(res.lines()) == 12 and "unique per row while queries repeat" in res.stderr
    res = run_still(["sample", "--per-query", "1", "--query-id-field", ""], stdin=multi_sample())
    assert len(res.lines()) == 3 and "unique per row" not in res.stderr


def test_sample_without_selection_says_so():
    res = run_still("sample", stdin=multi_sample())
    assert len(res.lines()) == 12 and "no selection option" in res.stderr
    assert "no selection option" not in run_still("sample -n 2", stdin=multi_sample()).stderr


# ------------------------------------------------------------------ files and signals
def _popen(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "still", *args], preexec_fn=lambda: os.umask(0o022), **kw)


def test_outputs_respect_the_umask(tmp_path: Path):
    out, st, clusters = tmp_path / "o.jsonl", tmp_path / "s.json", tmp_path / "c.jsonl"
    proc = _popen(
        ["dedup", "-q", "-o", str(out), "--stats", str(st), "--clusters", str(clusters)],
        stdin=subprocess.PIPE,
    )
    proc.communicate(multi_sample().encode())
    assert proc.returncode == 0
    for path in (out, st, clusters):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    index = tmp_path / "idx"
    bench = data_file("benchmarks/aime24.jsonl")
    build = _popen(["decontam", "index", "build", "--against", str(bench), "-o", str(index)])
    assert build.wait() == 0
    assert stat.S_IMODE(index.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in index.iterdir())


def test_gzip_output_is_fast_by_default(tmp_path: Path):
    # byte 8 of a gzip header (XFL) says 4 for the fastest level, 2 for the best
    run_still(["dedup", "-q", "-o", str(tmp_path / "a.gz")], stdin=multi_sample())
    run_still(["dedup", "-q", "--gzip-level", "9", "-o", str(tmp_path / "b.gz")], stdin=multi_sample())
    assert (tmp_path / "a.gz").read_bytes()[8] == 4 and (tmp_path / "b.gz").read_bytes()[8] == 2
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == gzip.decompress((tmp_path / "b.gz").read_bytes())


def _wait_for_part(directory: Path, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if list(directory.glob(".still-*.part")):
            return
        assert proc.poll() is None, "still exited early"
        time.sleep(0.05)
    raise AssertionError("no .part file appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_remove_part_files_and_exit_128_plus_n(tmp_path: Path, sig: int):
    out = tmp_path / "out.jsonl"
    proc = _popen(["dedup", "-q", "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(multi_sample().encode())
    proc.stdin.flush()  # stdin stays open: still waits for more, as in a long run
    _wait_for_part(tmp_path, proc)
    time.sleep(0.3)  # past start-up, into the read loop
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert not list(tmp_path.iterdir()), "output or .part file left behind"
    assert b"Aborted" not in err and b"Traceback" not in err


def test_exit_141_when_the_reader_goes_away(tmp_path: Path):
    big = tmp_path / "big.jsonl"
    big.write_text(jsonl(*({"query": f"question {i} " + "x" * 200} for i in range(20000))))
    proc = _popen(["dedup", "--exact-only", str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline()  # like `| head -1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"Error" not in err


# ------------------------------------------------------------------ progress
def test_progress_shows_rate_percent_and_eta():
    from still.cli._common import Progress

    p = Progress("still dedup", True, total_bytes=1000)
    p.started, p.done_bytes = 0.0, 250
    text = p.line(5000, now=10.0)
    assert text == "still dedup: 5,000 read, 500/s, 25%, ETA 0:30"
    unknown_size = Progress("still dedup", True)
    assert unknown_size.line(10, now=unknown_size.started + 2).endswith("10 read, 5/s")


# ------------------------------------------------------------------ the first run and the docs
def test_readme_is_short_and_links_a_guide_per_command():
    from still.cli import COMMANDS

    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 300
    assert "cli-reference:start" not in readme  # the generated reference lives in docs/cli.md
    for name in COMMANDS:
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
        assert f"docs/{name}.md" in readme, name
    import re

    for target in re.findall(r"\]\(((?!http)[^)#]+)", readme):
        assert (ROOT / target).exists(), target


def _repo_lookalike(tmp_path: Path, queries: int) -> Path:
    """A working directory laid out like the repository after `make demo`: examples/, .venv/bin/still
    and demo-out/ (a small generated dataset)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "still").symlink_to(Path(sys.executable).with_name("still"))
    gen = [sys.executable, str(ROOT / "examples" / "make_sample.py"), "--seed", "7", "--queries", str(queries)]
    subprocess.run([*gen, "--out", str(tmp_path / "demo-out")], check=True, capture_output=True)
    return tmp_path


def _path_without_still() -> str:
    venv_bin = str(Path(sys.executable).parent)
    return ":".join(p for p in os.environ.get("PATH", "").split(":") if p != venv_bin)


def test_readme_makefile_recipe_runs_as_copied(tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("make -f examples/experiment.mk"))
    cwd = _repo_lookalike(tmp_path, 16)
    env = {**os.environ, "PATH": _path_without_still(), "MAKEFLAGS": ""}  # no `still` on PATH
    res = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (cwd / "exp" / "train.jsonl").stat().st_size > 0


def test_demo_pipeline_shows_commands_and_checks_what_was_planted(tmp_path: Path):
    cwd = _repo_lookalike(tmp_path, 16)
    still = str(cwd / ".venv" / "bin" / "still")
    res = subprocess.run(
        ["bash", str(ROOT / "examples" / "pipeline.sh"), "demo-out", still, sys.executable],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "$ still dedup --key query+response" in out and "$ still sample" in out
    truth = json.loads((cwd / "demo-out" / "truth.json").read_text())
    assert f"exact duplicates found       {truth['exact_duplicates']}/{truth['exact_duplicates']}" in out
    assert f"contaminated records found   {truth['contaminated']}/{truth['contaminated']}" in out
    assert "try next:" in out


def test_builtin_benchmark_error_names_the_extra():
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed here: the message for its absence cannot show")
    res = run_still("decontam --against math500", stdin=jsonl({"query": "q"}), code=None)
    assert res.code != 0 and "pip install 'still[hub]'" in res.stderr


def test_progress_in_a_pipeline_prints_whole_lines(capsys: pytest.CaptureFixture[str]):
    from still.cli._common import Progress
    from still.core.jsonl import Record
    from still.core.stats import RunStats

    stats = RunStats("dedup")
    p = Progress("still dedup", True, total_bytes=30, in_pipe=True)
    p.interval = 0.0  # every record: each update must be a line of its own
    records = [Record({}, b"{}\n", "f", i) for i in range(3)]
    for _ in p.wrap(iter(records), stats):
        stats.read += 1
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 3
    assert all(line.startswith("still dedup: ") for line in err.splitlines())
