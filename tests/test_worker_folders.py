"""Worker pools started from a folder holding another `still/` (a second checkout, or this
repository itself) must run the installed package, and jobs must still find relative paths.

A forkserver runs as `python -c`, whose sys.path begins with its working directory, and Python 3.11
ignores the sys.path it is handed; so each pool's server starts in a neutral folder. The console
script is used because `python -m` would put the folder first in the command itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_still

sys.path.insert(0, str(ROOT / "bench"))
import corpus  # noqa: E402

SCRIPT = Path(sys.executable).parent / "still"


def _decoy(folder: Path) -> None:
    (folder / "still").mkdir()
    (folder / "still" / "__init__.py").write_text("raise RuntimeError('the decoy still package was imported')\n")


def _in(folder: Path, args: list[str], data: bytes = b"") -> bytes:
    if not SCRIPT.exists():
        pytest.skip("no still console script next to this Python")
    res = subprocess.run([str(SCRIPT), *args], input=data, cwd=folder, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def test_verify_math_workers_run_the_installed_still(tmp_path: Path) -> None:
    _decoy(tmp_path)
    rows = [
        {"id": "a", "answer": "\\frac{\\pi}{2}", "response": "</think>Answer: pi/2"},
        {"id": "b", "answer": "x^2+1", "response": "</think>\\boxed{1+x^2}"},
        {"id": "c", "answer": "1/2^{99}", "response": "</think>\\boxed{1/2^{98}}"},
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    here = _in(tmp_path, ["verify", "--workers", "2"], data)
    assert here == run_still(["verify", "--workers", "2"], stdin=data).stdout
    assert [json.loads(line)["verify"]["verdict"] for line in here.splitlines()][:2] == ["correct", "correct"]


def test_plan_run_jobs_run_the_installed_still_on_relative_paths(tmp_path: Path) -> None:
    _decoy(tmp_path)
    docs = [json.dumps(d).encode() + b"\n" for d in corpus.documents(400, words=40, dup_rate=0.3, seed=4)]
    (tmp_path / "a.jsonl").write_bytes(b"".join(docs[:200]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(docs[200:]))
    _in(tmp_path, ["dedup", "plan", "run", "--jobs", "2", "--buckets", "2", "-o", "out", "plan", "a.jsonl", "b.jsonl"])
    kept = b"".join(path.read_bytes() for path in sorted((tmp_path / "out").iterdir()))
    assert kept == run_still(["dedup"], stdin=b"".join(docs)).stdout
