"""still grade: DeepDistill pass rate and CV, level schemes, order-free spooling, grade -> sample."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_still

from still.core.grade import GradeConfig, grade_records
from still.core.grade_levels import LevelConfig, Leveller, ModelGrade
from still.core.jsonl import Record
from still.core.stats import RunStats


def dump(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def rows_for(qid: str, model: str, scores: list[float], domain: str = "math", **extra: Any) -> list[dict[str, Any]]:
    return [
        {"id": qid, "model": model, "domain": domain, "response": f"{qid}-{model}-{i}", "verify": {"score": s}, **extra}
        for i, s in enumerate(scores)
    ]


def grade_core(rows: list[dict[str, Any]], **kwargs: Any) -> tuple[list[dict[str, Any]], RunStats]:
    stats = RunStats("grade")
    records = [Record(dict(r), None, "t", i + 1) for i, r in enumerate(rows)]
    stats.read = len(records)
    out = [rec.data for rec in grade_records(records, GradeConfig(**kwargs), stats)]
    return out, stats


def by_id(out: list[bytes]) -> dict[str, dict[str, Any]]:
    return {json.loads(x)["id"]: json.loads(x) for x in out}


# --- DeepDistill definitions ------------------------------------------------------------------

# Score lists that reproduce the CVs of DeepDistill's worked examples (QB 0.632, QC 0.101, QD 0.177
# with the sample std; QB 0.566 with the population std): the research notes give the CVs.
QB, QC, QD = [0.1, 0.3, 0.5, 0.7, 0.9], [0.6, 0.7, 0.7, 0.7, 0.8], [0.6, 0.8, 0.8, 0.8, 1.0]
WORKED = rows_for("QB", "r1", QB, "code") + rows_for("QC", "r1", QC, "code") + rows_for("QD", "r1", QD, "code")


def test_golden_cv_ddof1_reproduces_the_worked_examples() -> None:
    res = run_still("grade", stdin=dump(WORKED))
    got = by_id(res.lines())
    assert [round(got[q]["grade"]["r1"]["cv"], 3) for q in ("QB", "QC", "QD")] == [0.632, 0.101, 0.177]
    qd = got["QD"]["grade"]["r1"]
    # code passes above 0.99: only QD's 1.0 does
    assert qd["pass_rate"] == 0.2 and qd["n"] == 5 and qd["n_truncated"] == 0
    assert qd["mean_score"] == pytest.approx(0.8)
    assert got["QB"]["grade"]["r1"]["pass_rate"] == 0.0
    assert "adds nothing" not in res.stderr  # continuous scores: CV carries information


def test_golden_cv_ddof0_path() -> None:
    got = by_id(run_still("grade --cv-ddof 0", stdin=dump(WORKED)).lines())
    assert [round(got[q]["grade"]["r1"]["cv"], 3) for q in ("QB", "QC", "QD")] == [0.566, 0.09, 0.158]


def test_cv_undefined_when_mean_is_zero_and_single_response_with_ddof1() -> None:
    out, _ = grade_core(rows_for("z", "m", [0.0, 0.0]) + rows_for("one", "m", [0.5]))
    assert out[0]["grade"]["m"]["cv"] is None
    assert out[2]["grade"]["m"]["cv"] is None  # n = 1 <= ddof
    out0, _ = grade_core(rows_for("one", "m", [0.5]), cv_ddof=0)
    assert out0[0]["grade"]["m"]["cv"] == 0.0


def test_category_pass_thresholds_deepdistill_defaults_and_overrides() -> None:
    rows = (
        rows_for("m", "r1", [1.0, 0.99], "math")  # > 0.99 passes, 0.99 does not
        + rows_for("o", "r1", [0.71, 0.7], "other")  # > 0.7
        + rows_for("s", "r1", [5.0, 4.99, 4.0], "science")  # 0-5 scores need science=4.99
    )
    got = by_id(run_still("grade", stdin=dump(rows)).lines())
    assert got["m"]["grade"]["r1"]["pass_rate"] == 0.5
    assert got["o"]["grade"]["r1"]["pass_rate"] == 0.5
    res = run_still("grade", stdin=dump(rows))
    assert "science scores above 1" in res.stderr and "science=4.99" in res.stderr
    got = by_id(run_still(["grade", "--pass-threshold", "science=4.99"], stdin=dump(rows)).lines())
    assert got["s"]["grade"]["r1"]["pass_rate"] == pytest.approx(1 / 3)
    got = by_id(run_still(["grade", "--pass-threshold", "math=0.5"], stdin=dump(rows)).lines())
    assert got["m"]["grade"]["r1"]["pass_rate"] == 1.0


def test_binary_scores_warn_that_cv_adds_nothing() -> None:
    rows = rows_for("a", "m", [1, 0, 0, 0]) + rows_for("b", "m", [1, 1, 0, 0])
    res = run_still("grade --stats /dev/stderr", stdin=dump(rows))
    assert "CV is then a function of the pass rate" in res.stderr
    got = by_id(res.lines())
    # sqrt((1-p)/p) with ddof 0 is 1.732 at p = .25; ddof 1 scales it by sqrt(n/(n-1))
    assert got["a"]["grade"]["m"]["cv"] == pytest.approx(3**0.5 * (4 / 3) ** 0.5)


def test_truncated_responses_are_counted_and_fail() -> None:
    rows = rows_for("t", "m", [1.0, 0.0, 0.0])
    rows[1]["verify"]["verdict"] = "truncated"
    rows[2]["finish_reason"] = "length"
    out, _ = grade_core(rows)
    g = out[0]["grade"]["m"]
    assert g["n_truncated"] == 2 and g["pass_rate"] == pytest.approx(1 / 3) and g["n"] == 3


# --- level schemes ----------------------------------------------------------------------------


def mg(pass_rate: float, mean_score: float | None = None) -> ModelGrade:
    return ModelGrade(pass_rate, pass_rate if mean_score is None else mean_score, None, 4, 0)


def test_bands_levels_one_per_pass_count_with_k4() -> None:
    lev = Leveller(LevelConfig("bands"))
    assert [lev.level({"m": mg(p)}) for p in (1.0, 0.75, 0.5, 0.25, 0.0)] == [1, 2, 3, 4, 5]
    custom = Leveller(LevelConfig("bands", band_edges=(0.5, 0.0)))
    assert [custom.level({"m": mg(p)}) for p in (1.0, 0.5, 0.25, 0.0)] == [1, 2, 2, 3]
    # several models: the named one, else the mean pass rate over the models
    named = Leveller(LevelConfig("bands", level_model="small"))
    assert named.level({"small": mg(0.0), "big": mg(1.0)}) == 5
    assert lev.level({"small": mg(0.0), "big": mg(1.0)}) == 3  # mean 0.5: not > 0.5, > 0.25
    assert named.level({"big": mg(1.0)}) is None and named.unlevelled == {"no responses of small": 1}


@pytest.mark.parametrize(
    ("small", "medium", "ref", "level"),
    [
        (0.5, 0.0, 1.0, 1),  # L1: the 1.5B in (0, 1)
        (0.25, 0.5, 0.5, 1),  # both in (0, 1): the paper's L1 and L2; the lower level wins
        (0.0, 1.0, 1.0, 2),  # L2: 1.5B = 0, 7B = 1
        (0.0, 0.25, 0.75, 2),  # L2: 1.5B = 0, 7B in (0, 1)
        (0.0, 0.0, 0.25, 3),  # L3: neither solves it
        (1.0, 1.0, 1.0, 0),  # the 1.5B always solves it: below L1
        (0.5, 0.5, 0.0, None),  # R1 never solves it: dropped by the paper, no level
    ],
)
def test_am_levels(small: float, medium: float, ref: float, level: int | None) -> None:
    lev = Leveller(LevelConfig("am", am_models=("1.5b", "7b", "r1")))
    assert lev.level({"1.5b": mg(small), "7b": mg(medium), "r1": mg(ref)}) == level


def test_am_levels_without_reference_and_with_a_model_missing() -> None:
    lev = Leveller(LevelConfig("am", am_models=("1.5b", "7b")))
    assert lev.level({"1.5b": mg(0.0), "7b": mg(0.0), "r1": mg(0.0)}) == 3
    assert lev.level({"1.5b": mg(0.0)}) is None
    assert lev.unlevelled == {"no responses of 7b": 1}


def test_adaptive_levels_student_correct_is_easy_rest_by_teacher_bins() -> None:
    lev = Leveller(LevelConfig("adaptive", level_model="student"))
    assert lev.level({"student": mg(0.5), "teacher": mg(0.0)}) == 1  # the student's own correct answers
    got = [lev.level({"student": mg(0.25), "teacher": mg(t)}) for t in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert got == [2, 3, 4, 5, 5]
    easier = Leveller(LevelConfig("adaptive", level_model="student", easy_pass_rate=0.25))
    assert easier.level({"student": mg(0.25), "teacher": mg(0.0)}) == 1
    alone = Leveller(LevelConfig("adaptive"))  # one model: its own mean score ranks the rest
    assert alone.level({"s": mg(0.0, mean_score=0.6)}) == 3


def test_levels_through_the_cli() -> None:
    rows = (
        rows_for("q1", "small", [1, 0, 0, 0])
        + rows_for("q1", "medium", [1, 1, 0, 0])
        + rows_for("q1", "ref", [1, 1, 1, 1])
        + rows_for("q2", "small", [0, 0])
        + rows_for("q2", "medium", [1, 0])
        + rows_for("q2", "ref", [1, 1])
        + rows_for("q3", "small", [0, 0])
        + rows_for("q3", "medium", [0, 0])
        + rows_for("q3", "ref", [0, 0])
    )
    res = run_still("grade --levels am --am-models small,medium,ref", stdin=dump(rows))
    levels = {json.loads(x)["id"]: json.loads(x)["difficulty"] for x in res.lines()}
    assert levels == {"q1": 1, "q2": 2, "q3": None}
    assert "ref never passed" in res.stderr
    res = run_still("grade --levels adaptive --level-model small", stdin=dump(rows))
    levels = {json.loads(x)["id"]: json.loads(x)["difficulty"] for x in res.lines()}
    # q1: small 0.25 < 0.5, teachers' mean (0.5 + 1) / 2 = 0.75 -> not > 0.75 -> 3
    assert levels == {"q1": 3, "q2": 3, "q3": 5}
    res = run_still("grade --levels adaptive", stdin=dump(rows), code=2)
    assert "--level-model" in res.stderr
    # every line of a query carries every model's grade
    line = json.loads(run_still("grade", stdin=dump(rows)).lines()[0])
    assert set(line["grade"]) == {"small", "medium", "ref"}


# --- order, memory, accounting ----------------------------------------------------------------


def random_rows(n: int, queries: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = rng.randrange(queries)
        rows.append(
            {
                "id": f"q{q}",
                "model": f"m{rng.randrange(3)}",
                "domain": rng.choice(["math", "code", "other"]),
                "response": f"r{i}",
                "verify": {"score": rng.choice([0.0, 1.0, rng.random()])},
            }
        )
    return rows


def test_unsorted_input_gives_the_same_grades_as_sorted_in_input_order() -> None:
    rows = random_rows(600, 50, seed=1)
    sorted_rows = sorted(rows, key=lambda r: (r["id"], r["model"], r["response"]))
    out_shuffled, _ = grade_core(rows)
    out_sorted, _ = grade_core(sorted_rows)
    assert [r["response"] for r in out_shuffled] == [r["response"] for r in rows]  # input order kept
    key = lambda r: r["response"]  # noqa: E731
    assert sorted(out_shuffled, key=key) == sorted(out_sorted, key=key)
    # and the grade is the one computed by hand for a query
    mine = [r for r in rows if r["id"] == "q7" and r["model"] == "m1"]
    thresholds = {"math": 0.99, "code": 0.99, "other": 0.7}
    passed = sum(1 for r in mine if r["verify"]["score"] > thresholds[r["domain"]])
    got = next(r for r in out_shuffled if r["id"] == "q7")["grade"]["m1"]
    assert got["n"] == len(mine) and got["pass_rate"] == passed / len(mine)


def test_spool_memory_is_bounded_and_spilling_changes_nothing() -> None:
    # 30k responses of 3k queries; 200 keys in memory at most, partitions split again when too big
    rows = random_rows(30_000, 3_000, seed=2)
    in_memory, stats_mem = grade_core(rows)
    spilled, stats_spill = grade_core(rows, spill_after=200)
    assert stats_mem.extra["grade"]["spilled"] is False
    assert stats_mem.extra["grade"]["keys_held_max"] == 30_000
    assert stats_spill.extra["grade"]["spilled"] is True
    assert stats_spill.extra["grade"]["keys_held_max"] <= 200
    assert spilled == in_memory


def test_large_generated_input_through_the_cli_with_a_small_key_budget(tmp_path: Any) -> None:
    src = tmp_path / "big.jsonl"
    src.write_text(dump(random_rows(20_000, 4_000, seed=3)))
    stats = tmp_path / "stats.json"
    a = run_still(["grade", str(src), "--spill-after", "500", "--stats", str(stats)])
    b = run_still(["grade", str(src)])
    assert a.stdout == b.stdout and len(a.lines()) == 20_000
    info = json.loads(stats.read_text())
    assert info["read"] == info["written"] == 20_000 and info["grade"]["keys_held_max"] <= 500


def test_regrade_replaces_grade_and_difficulty() -> None:
    first = run_still("grade", stdin=dump(rows_for("a", "m", [1, 0]))).stdout
    again = run_still("grade --cv-ddof 0", stdin=first).lines()
    rec = json.loads(again[0])
    assert list(rec).count("grade") == 1 and rec["grade"]["m"]["cv"] == 1.0


def test_unverified_records_are_verified_in_process() -> None:
    rows = [
        {"id": "a", "model": "m", "response": "so \\boxed{4}", "answer": "4"},
        {"id": "a", "model": "m", "response": "so \\boxed{5}", "answer": "4"},
        {"id": "a", "model": "m", "response": "x", "verify": {"verdict": "correct", "score": 1.0}},
    ]
    res = run_still("grade --stats /dev/stderr", stdin=dump(rows))
    out = [json.loads(x) for x in res.lines()]
    assert [r["verify"]["verdict"] for r in out] == ["correct", "wrong", "correct"]
    assert out[2]["verify"] == {"verdict": "correct", "score": 1.0}  # kept as it was
    assert out[0]["grade"]["m"]["pass_rate"] == pytest.approx(2 / 3)


def test_bad_input_is_located_and_every_record_is_accounted_for(tmp_path: Any) -> None:
    rows = rows_for("a", "m", [1, 0])
    del rows[1]["model"]
    text = dump(rows) + "not json\n" + json.dumps({"id": "b", "model": "m", "response": "r"}) + "\n"
    res = run_still("grade", stdin=text, code=3)
    assert "<stdin>:2: no model field (model)" in res.stderr and "Traceback" not in res.stderr
    stats = tmp_path / "s.json"
    res = run_still(["grade", "--on-error", "skip", "--stats", str(stats)], stdin=text)
    info = json.loads(stats.read_text())
    assert info["read"] == 4 and info["written"] == 1 and sum(info["errors"].values()) == 3
    assert json.loads(res.lines()[0])["grade"]["m"]["n"] == 1


def test_usage_errors() -> None:
    assert "--am-models" in run_still("grade --levels am", stdin="", code=2).stderr
    assert "descending" in run_still("grade --band-edges 0.2,0.5", stdin="", code=2).stderr
    assert "--band-edges" in run_still("grade --band-edges x", stdin="", code=2).stderr
    assert "only apply with --model" in run_still("grade -k 8 --temperature 0", stdin="", code=2).stderr


# --- grade -> sample --------------------------------------------------------------------------


def pipeline_rows() -> list[dict[str, Any]]:
    rng = random.Random(5)
    rows = []
    for q in range(40):
        domain = "code" if q % 2 else "math"
        for i in range(4):
            score = rng.choice([0.0, 1.0]) if domain == "math" else rng.choice([0.0, 0.3, 0.6, 1.0])
            rows.append(
                {
                    "id": f"q{q}",
                    "model": "r1",
                    "domain": domain,
                    "response": f"q{q} answer {i}",
                    "n_tokens": rng.randrange(10, 1000),
                    "verify": {"score": score},
                }
            )
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize(
    "sample_args",
    [
        "--preset deepdistill-stage1 --cv-threshold math=0.5,code=0.4",
        "--preset deepdistill-stage2 --cv-threshold *=0.4",
        "--preset openthoughts --length-top 0.5",
        "--pass-rate 0.25..0.75",
        "--difficulty-weights 1=1,3=2,5=1 -n 40 --seed 3",
    ],
)
def test_grade_output_feeds_sample_presets_as_is(sample_args: str, tmp_path: Any) -> None:
    graded = run_still("grade", stdin=dump(pipeline_rows())).stdout
    piped = run_still(f"sample {sample_args}", stdin=graded)
    # the same selection as sample computing pass rate / CV itself from adjacent verify scores
    rows = sorted(pipeline_rows(), key=lambda r: r["id"])
    adjacent = run_still(f"sample {sample_args} --query-stats adjacent", stdin=dump(rows), code=None)
    got = sorted(json.loads(x)["response"] for x in piped.lines())
    assert got, piped.stderr
    if "difficulty" not in sample_args:
        assert got == sorted(json.loads(x)["response"] for x in adjacent.lines())
    else:
        levels = [json.loads(x)["difficulty"] for x in piped.lines()]
        assert set(levels) <= {1, 3, 5}


# --- generation through the engines -----------------------------------------------------------


def test_grade_generates_through_the_hf_engine_and_accounts_for_everything(tiny_model: Any, tmp_path: Any) -> None:
    # the tiny models answer at random: what is checked is the shape, the accounting and that each
    # line's grade and level are the ones its query's kept and generated, verified lines give
    from tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    teacher = [
        {
            "id": "a",
            "query": "What is 2+2?",
            "answer": "4",
            "domain": "math",
            "model": "teacher",
            "response": "4",
            "verify": {"verdict": "correct", "score": 1.0},
        },
        {
            "id": "c",
            "problem": "What is 1+5?",
            "answer": "6",
            "domain": "math",
            "model": "teacher",
            "response": "7",
            "verify": {"verdict": "wrong", "score": 0.0},
        },
        {
            "id": "a",
            "query": "What is 2+2?",
            "answer": "4",
            "domain": "math",
            "model": "teacher",
            "response": "four",
            "verify": {"verdict": "correct", "score": 1.0},
        },
    ]
    queries = [
        {"id": "b", "query": "What is 3+3?"},  # no answer: its responses cannot be verified
        {"id": "d"},  # no query at all
    ]
    m1, m2 = str(tiny_model), str(other)
    stats = tmp_path / "stats.json"
    args = ["grade", "-m", m1, "-m", m2, "-k", "3", "--max-tokens", "12", "--device", "cpu", "--on-error", "skip"]
    args += ["--levels", "adaptive", "--level-model", m1, "--stats", str(stats)]
    res = run_still(args, stdin=dump(teacher[:2] + queries + teacher[2:]))
    out = [json.loads(x) for x in res.lines()]
    # the input's responses first, in input order; then the generated ones: query, model, sample
    assert [r["response"] for r in out[:3]] == ["4", "7", "four"]
    assert [(r["id"], r["model"], r["sample_idx"]) for r in out[3:]] == [
        (q, m, i) for q in ("a", "c") for m in (m1, m2) for i in range(3)
    ]
    for qid in ("a", "c"):
        lines = [r for r in out if r["id"] == qid]
        assert set(lines[0]["grade"]) == {"teacher", m1, m2}
        grades = {}
        for m in ("teacher", m1, m2):
            mine = [r for r in lines if r["model"] == m]
            g = lines[0]["grade"][m]
            assert g["n"] == len(mine) == (2 if qid == "a" and m == "teacher" else 1 if m == "teacher" else 3)
            assert g["pass_rate"] == sum(r["verify"]["score"] > 0.99 for r in mine) / len(mine)
            assert g["n_truncated"] == sum(r.get("finish_reason") == "length" for r in mine)
            grades[m] = ModelGrade(g["pass_rate"], g["mean_score"], g["cv"], g["n"], g["n_truncated"])
        level = Leveller(LevelConfig("adaptive", level_model=m1)).level(grades)
        assert all(r["grade"] == lines[0]["grade"] and r["difficulty"] == level for r in lines)
    # generated responses are verified here, never given the teacher's verdict they were made from
    assert all("method" in r["verify"] for r in out[3:]) and all("method" not in r["verify"] for r in out[:3])
    info = json.loads(stats.read_text())
    assert info["input"] == {"lines": 5, "responses_kept": 3, "query_lines": 2}
    g = info["generate"]
    assert (g["queries"], g["generated_for"], g["rejected"], g["responses"]) == (4, 3, {"no query field": 1}, 18)
    assert info["read"] == 21 and info["written"] == 15 and sum(info["errors"].values()) == 6


def _journalled(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b"\n") - 1  # the first line names the run
    except FileNotFoundError:
        return 0


def _interrupt(argv: list[str], journal: Path, lines: int, sig: int) -> int:
    """Start ``argv``, send ``sig`` once the journal holds ``lines`` responses; the exit status."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 240
    while _journalled(journal) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: make it longer"
    os.kill(proc.pid, sig)
    return proc.wait()


@pytest.mark.slow
def test_grade_generation_resumes_after_sigint_and_kill_9(tiny_model: Any, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    rows = [{"id": f"q{i}", "query": f"What is {i} + {i}?", "answer": str(2 * i), "domain": "math"} for i in range(6)]
    queries.write_text(dump(rows))
    out, stats = tmp_path / "graded.jsonl", tmp_path / "stats.json"
    journal = Path(f"{out}.journal")
    common = ["grade", "-m", str(tiny_model), "-k", "3", "--max-tokens", "16", "--seed", "9", "--device", "cpu"]
    argv = [sys.executable, "-m", "still", *common, "--batch-size", "1", "-o", str(out), str(queries)]
    assert _interrupt(argv, journal, 3, signal.SIGINT) == 130
    assert not out.exists() and 3 <= _journalled(journal) < 18
    run_still([*common, "-o", str(out), str(queries)], code=2)  # a journal and no --resume: refused
    run_still([*common[:-4], "-o", str(out), "--resume", str(queries)], code=2)  # other settings: refused
    assert _interrupt([*argv, "--resume"], journal, 9, signal.SIGKILL) == -signal.SIGKILL
    assert not out.exists() and 9 <= (done := _journalled(journal)) < 18
    run_still([*common, "--batch-size", "8", "-o", str(out), "--resume", "--stats", str(stats), str(queries)])
    assert not journal.exists()
    generated = json.loads(stats.read_text())["generate"]
    assert generated["resumed"] == done and generated["responses"] == 18 - done  # nothing generated twice
    fresh = run_still([*common, "--batch-size", "8", str(queries)])
    assert out.read_bytes() == fresh.stdout  # byte-identical to an uninterrupted run
    keys = [(r["id"], r["sample_idx"]) for r in map(json.loads, fresh.lines())]
    assert keys == [(f"q{i}", s) for i in range(6) for s in range(3)]
    assert "--resume only apply with --model" in run_still("grade --resume", stdin="", code=2).stderr
