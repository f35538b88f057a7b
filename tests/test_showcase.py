"""The branch-merge showcase (examples/branch_merge) at a reduced scale: every stage runs and the
run summaries add up. Accuracy is the full run's business (`make showcase`), not this test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

REDUCED = {
    "TEACHER_TRAIN": "400",
    "FRESH": "12",
    "EVAL": "6",
    "PLANTED": "2",
    "K": "4",
    "EVAL_K": "2",
    "TEACHER_STEPS": "150",
    "BASE_STEPS": "4",
    "BRANCH_STEPS": "4",
    "TEACHER_SHAPE": "--layers 2 --hidden 64 --heads 2",
    "STUDENT_SHAPE": "--layers 1 --hidden 64 --heads 2",
    "PASS_BAND": "0..1",
    "PASSING": "",
    "SORT_LEN": "2",
    "BATCH": "2",
    "LR": "5e-3",
    "MAX_TOKENS": "48",
}
MODELS = ["teacher", "base", "branch-add", "branch-sort", "branch-sort-redi", "merge-linear", "merge-ties"]


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def balanced(stats: dict) -> bool:
    """records in = written + dropped (+ errors), less the records a command creates."""
    accounted = stats["written"] + sum(stats["dropped"].values()) + sum(stats["errors"].values())
    return bool(accounted == stats["read"] + stats.get("created", 0))


@pytest.mark.slow
def test_showcase_reduced_every_stage_accounted(tmp_path: Path) -> None:
    out = tmp_path / "showcase"
    still = str(Path(sys.executable).with_name("still"))
    args = ["make", "-j2", "-f", str(ROOT / "examples" / "branch_merge" / "Makefile"), f"OUT={out}"]
    args += [f"STILL={still}", f"PY={sys.executable}", *(f"{k}={v}" for k, v in REDUCED.items())]
    # a teacher trained for seconds solves nothing: REDI's positives are the rule-made solutions
    args += [f"REDI_EXTRA={out / 'reference-verified.jsonl'}"]
    run = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "MAKEFLAGS": ""})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    check_reduced_run(out)


def check_reduced_run(out: Path) -> None:
    stats = {
        p.stem: json.loads(p.read_text()) for p in (out / "stats").glob("*.json") if not p.stem.startswith("merge")
    }
    for name, summary in stats.items():
        assert balanced(summary), (name, summary)
    data = out / "data"
    # each stage reads what the one before wrote
    fresh = lines(data / "fresh.jsonl")
    # generate counts queries: each written query is K response lines
    assert stats["generate"]["read"] == stats["generate"]["written"] == fresh
    assert lines(out / "generated.jsonl") == fresh * int(REDUCED["K"])
    chain = ["generated", "unique", "clean", "verified", "graded", "selected"]  # one line per response
    commands = ["dedup", "decontam", "verify", "grade", "sample"]
    for before, after, command in zip(chain[:-1], chain[1:], commands, strict=True):
        assert stats[command]["read"] == lines(out / f"{before}.jsonl"), command
        assert stats[command]["written"] == lines(out / f"{after}.jsonl"), command
    # the planted eval problems, and only they, were found and their samples removed
    report = json.loads((out / "contamination.json").read_text())
    hit = {h["item"] for bench in report["benchmarks"] for h in bench["hit_items"]}
    planted = int(REDUCED["PLANTED"])
    assert hit == {f"{d}-eval-{i}" for d in ("add", "sort") for i in range(planted)}
    assert stats["decontam"]["dropped"]["contaminated"] == report["records"]["contaminated"] > 0
    # the domain splits partition the selection
    selected = lines(out / "selected.jsonl")
    assert stats["split-add"]["written"] + stats["split-sort"]["written"] == selected
    assert stats["pairs-sort"]["read"] == lines(out / "graded.jsonl")
    # training read every record it was given
    assert stats["train-teacher"]["read"] == lines(data / "teacher-train.jsonl")
    assert stats["train-base"]["read"] == selected
    for domain in ("add", "sort"):
        assert stats[f"train-branch-{domain}"]["read"] == lines(out / f"selected-{domain}.jsonl")
    redi_in = lines(out / "pairs-sort.jsonl") + lines(out / "reference-verified.jsonl")
    assert stats["train-branch-sort-redi"]["read"] == redi_in
    assert stats["verify-reference"]["read"] == lines(data / "fresh-reference.jsonl") == 2 * int(REDUCED["FRESH"])
    for method in ("linear", "ties"):
        assert (out / "models" / f"merge-{method}" / "config.json").exists()
        assert json.loads((out / "stats" / f"merge-{method}.json").read_text())
    # every model evaluated on both domains, with an interval; merges compared with each branch
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == set(MODELS) and results["seconds"] > 0
    # every command's wall and CPU time, grouped by stage (the full run's profile)
    timed = {st["stage"] for st in results["stages"]}
    assert {"init models", "generated", *(f"model {m}" for m in MODELS), *(f"eval {m}" for m in MODELS)} <= timed
    assert results["cpu_seconds"] == pytest.approx(sum(st["cpu_s"] for st in results["stages"]), abs=0.2)
    for name in MODELS:
        for domain in ("add", "sort"):
            r = results["models"][name][domain]
            assert 0 <= r["ci95"][0] <= r["avg_at_k"] <= r["ci95"][1] <= 1, (name, domain, r)
        n_samples = sum(
            1 for row in map(json.loads, (out / "eval" / f"{name}.jsonl").read_text().splitlines()) if "response" in row
        )
        assert n_samples == 2 * int(REDUCED["EVAL"]) * int(REDUCED["EVAL_K"])
    # each merge minus each branch, on both domains
    assert len(results["compare"]) == 8
    assert {(c["merge"], c["branch"]) for c in results["compare"]} == {
        (f"merge-{m}", f"branch-{d}") for m in ("linear", "ties") for d in ("add", "sort")
    }
    assert (out / "results.md").read_text().count("| merge-") == 2 + 8
