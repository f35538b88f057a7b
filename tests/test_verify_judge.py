"""still verify --judge: verdict parsing, Heimdall aggregation, and the judge run through a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_still

from still.core.jsonl import Record
from still.core.stats import RunStats
from still.core.verify_judge import JudgeConfig, _Judge, aggregate, parse_verdict


@pytest.mark.parametrize(
    ("text", "vote"),
    [
        ("The student says 4, the reference is 4. \\boxed{yes}", True),
        ("They differ.\n\\boxed{No}", False),
        ("\\boxed{\\text{correct}}", True),
        ("Reasoning...\nVerdict: incorrect", False),
        ("**Final verdict:** correct", True),
        ("Answer: yes", True),
        # the last marker wins: a judge that quotes the format before answering
        ("I must end with \\boxed{yes} or \\boxed{no}. They differ, so \\boxed{no}", False),
        # inside the thinking only: not a verdict; after it: the verdict
        ("<think>maybe \\boxed{yes}</think> On reflection \\boxed{no}", False),
        ("<think>\\boxed{yes}</think> I cannot tell.", None),
        ("yes no maybe", None),
        ("", None),
    ],
)
def test_parse_verdict(text: str, vote: bool | None) -> None:
    assert parse_verdict(text)[0] is vote


def test_parse_verdict_returns_the_reasoning_before_the_verdict() -> None:
    vote, reasoning = parse_verdict("Both are 4, so they agree.\n\\boxed{yes}")
    assert vote is True and reasoning == "Both are 4, so they agree."


def test_heimdall_aggregation() -> None:
    assert aggregate([True, True, False], "majority") is True
    assert aggregate([True, False], "majority") is False  # a tie is wrong
    assert aggregate([True, True, False], "pessimistic") is False
    assert aggregate([True, None, True], "pessimistic") is True  # unparsed votes do not count
    assert aggregate([None, None], "majority") is None


def _record(verdict: str) -> Record:
    data = {"id": "a", "query": "2+2?", "response": "four", "answer": "4"}
    data["verify"] = {"verdict": verdict, "score": 0.0, "extracted": None, "method": "extract", "reason": "x"}
    return Record(data, None, "t", 1)


def test_decide_overturns_with_reasoning_and_counts() -> None:
    stats = RunStats("verify")
    stats.extra["verdicts"] = {"no_answer": 2}
    judge = _Judge(JudgeConfig(model="m", samples=3, how="majority"), stats)
    rec = _record("no_answer")
    assert judge.wants(rec)
    judge.decide(rec, ["Four is 4. \\boxed{yes}", "garbled", "Same value. \\boxed{yes}"])
    v = rec.data["verify"]
    assert v["verdict"] == "correct" and v["score"] == 1.0 and v["method"] == "judge"
    assert v["reason"] == "Four is 4."
    assert v["judge"]["votes"] == {"yes": 2, "no": 0, "unparsed": 1} and v["judge"]["rule_verdict"] == "no_answer"
    assert stats.extra["verdicts"] == {"no_answer": 1, "correct": 1}
    pessimist = _Judge(JudgeConfig(model="m", samples=3, how="pessimistic"), stats)
    rec2 = _record("wrong")
    pessimist.decide(rec2, ["\\boxed{yes}", "\\boxed{yes}", "Verdict: no"])
    assert rec2.data["verify"]["verdict"] == "wrong" and rec2.data["verify"]["reason"] == ""
    rec3 = _record("wrong")
    pessimist.decide(rec3, ["no idea", "still none"])
    assert rec3.data["verify"]["verdict"] == "error" and "no parseable verdict" in rec3.data["verify"]["reason"]
    assert pessimist.counts["no_verdict"] == 1 and pessimist.counts["unparsed_samples"] == 2


def test_which_records_are_judged() -> None:
    judge = _Judge(JudgeConfig(model="m"), RunStats("verify"))
    assert not judge.wants(_record("correct")) and not judge.wants(_record("truncated"))
    code = _record("wrong")
    code.data["verify"]["method"] = "code"
    assert not judge.wants(code)
    assert _Judge(JudgeConfig(model="m", judge_all=True), RunStats("v")).wants(_record("correct"))


def test_judge_through_the_hf_engine_accounts_for_every_record(tiny_model: Path, tmp_path: Path) -> None:
    # the tiny model's text is random: it almost never gives a verdict, so those answers become
    # 'error'; what is checked is the flow: who is judged, how many samples, the accounting
    rows = [
        {"id": "a", "query": "What is 2+2?", "response": "It is four.", "answer": "4"},
        {"id": "b", "query": "What is 3+3?", "response": "\\boxed{6}", "answer": "6"},
        # prose the rules cannot read ("Paris" alone is now confirmed by the rules, not judged)
        {"id": "c", "query": "Capital of France?", "response": "The city of light, of course.", "answer": "Paris"},
    ]
    stats = tmp_path / "stats.json"
    args = ["verify", "--judge", str(tiny_model), "--judge-samples", "2", "--judge-max-tokens", "8"]
    res = run_still(
        [*args, "--judge-device", "cpu", "--stats", str(stats)], stdin="".join(json.dumps(r) + "\n" for r in rows)
    )
    out = [json.loads(x) for x in res.lines()]
    assert [r["id"] for r in out] == ["a", "b", "c"]
    assert out[1]["verify"]["method"] != "judge"  # the rules confirmed it: not judged
    for r in (out[0], out[2]):
        j = r["verify"]["judge"]
        assert r["verify"]["method"] == "judge" and sum(j["votes"].values()) == 2
        assert r["verify"]["verdict"] in ("correct", "wrong", "error")
        assert j["rule_verdict"] == "no_answer" and j["model"] == str(tiny_model)
    info = json.loads(stats.read_text())
    assert info["read"] == info["written"] == 3
    assert info["judge"]["judged"] == 2
    assert sum(info["verdicts"].values()) == 3


def test_judge_options_without_judge_are_a_usage_error() -> None:
    res = run_still("verify --judge-samples 3 --judge-engine openai", stdin="", code=2)
    assert "--judge-samples, --judge-engine only apply with --judge MODEL" in res.stderr


def test_a_record_without_query_or_id_is_still_judged() -> None:
    judge = _Judge(JudgeConfig(model="m", samples=2), RunStats("verify"))
    rec = Record({"response": "four", "answer": "4", "verify": {"verdict": "no_answer"}}, None, "t", 1)
    requests = judge.requests(rec)
    assert len(requests) == 2 and "(not given)" in requests[0].messages[0]["content"]
    assert requests[0].seed != requests[1].seed


@pytest.mark.slow
def test_judge_and_grade_through_the_openai_engine(tiny_model: Path, tmp_path: Path) -> None:
    # one real transformers serve on loopback: the judge and grade's generation go through the
    # openai engine as they do through hf (random model: shapes and accounting are checked)
    pytest.importorskip("fastapi", reason="needs the 'serving' extra: pip install 'still[serving]'")
    from serving import transformers_servers

    rows = [
        {"id": "a", "query": "What is 2+2?", "response": "It is four.", "answer": "4", "domain": "math"},
        {"id": "b", "query": "What is 3+3?", "response": "\\boxed{6}", "answer": "6", "domain": "math"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with transformers_servers([tiny_model], tmp_path) as (server,):
        url = server.url  # type: ignore[attr-defined]
        judge = ["verify", "--judge", str(tiny_model), "--judge-engine", "openai", "--judge-base-url", url]
        res = run_still([*judge, "--judge-samples", "2", "--judge-max-tokens", "8"], stdin=text)
        out = [json.loads(x) for x in res.lines()]
        assert out[0]["verify"]["method"] == "judge" and sum(out[0]["verify"]["judge"]["votes"].values()) == 2
        assert out[1]["verify"]["verdict"] == "correct" and "judge" not in out[1]["verify"]
        grade = ["grade", "-m", str(tiny_model), "--engine", "openai", "--base-url", url, "-k", "2"]
        res = run_still([*grade, "--max-tokens", "8"], stdin=text)
        out = [json.loads(x) for x in res.lines()]
    # the two input lines are queries here (no model field): 2 queries x 2 samples
    assert [(r["id"], r["sample_idx"]) for r in out] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(r["grade"][str(tiny_model)]["n"] == 2 and "method" in r["verify"] for r in out)
