"""The README's recipes run as written: the Makefile experiment and the demo data generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_makefile_experiment_builds_and_is_incremental(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generator = [sys.executable, str(ROOT / "examples" / "make_sample.py"), "--seed", "3", "--queries", "24"]
    subprocess.run([*generator, "--out", str(data)], check=True, capture_output=True)
    still = str(Path(sys.executable).with_name("still"))
    args = ["make", "-f", str(ROOT / "examples" / "experiment.mk"), f"STILL={still}", f"RAW={data / 'raw.jsonl'}"]
    args += [f"BENCH={data / 'bench.jsonl'}", f"OUT={tmp_path / 'exp'}"]
    env = {**os.environ, "MAKEFLAGS": ""}
    first = subprocess.run(args, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    exp = tmp_path / "exp"
    train = [json.loads(line) for line in (exp / "train.jsonl").read_text().splitlines()]
    verified = (exp / "verified.jsonl").read_text().splitlines()
    assert train and len(train) <= len(verified)
    assert all(r["verify"]["verdict"] in ("correct", "pass") for r in train)
    report = json.loads((exp / "contamination.json").read_text())
    truth = json.loads((data / "truth.json").read_text())
    # every planted benchmark item (make_sample.py plants the first ones) was found, nothing else
    hit = {h["item"] for bench in report["benchmarks"] for h in bench["hit_items"]}
    assert hit == {f"bench-{j}" for j in range(truth["contaminated"])}
    assert report["records"]["contaminated"] == truth["contaminated"] > 0
    truth = json.loads((data / "truth.json").read_text())
    clean = (exp / "clean.jsonl").read_text().splitlines()
    unique = (exp / "unique.jsonl").read_text().splitlines()
    assert len(unique) - len(clean) == truth["contaminated"]
    again = subprocess.run(args, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
