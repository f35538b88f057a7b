"""`still eval`: pass@k, cons@k, intervals, honest accounting, compare, report and plot."""

from __future__ import annotations

import itertools
import json
import random
import struct
from pathlib import Path

import pytest
from conftest import data_file, run_still

from still.core.eval_bench import gold_answer, load_benchmarks
from still.core.eval_stats import (
    bootstrap_ci,
    majority,
    paired_difference,
    pass_at_k,
    pass_at_k_points,
    sampling_se,
)


# ------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_brute_force_over_all_subsets(n: int) -> None:
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_pass_at_k_points() -> None:
    assert pass_at_k_points(64) == [1, 2, 4, 8, 16, 32, 64]
    assert pass_at_k_points(6) == [1, 2, 4, 6]
    assert pass_at_k_points(1) == [1]


def test_cons_at_k_tie_break_is_first_in_sample_order() -> None:
    assert majority(["b", "a", "a", "b"]) == ("b", 2)
    assert majority(["a", "b", "b", "a"]) == ("a", 2)
    assert majority([None, "c", None, "d", "d"]) == ("d", 2)  # no-answer samples do not vote
    assert majority([None, None]) == (None, 0)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = random.Random(1)
    values = [rng.random() for _ in range(200)]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < sum(values) / len(values) < hi


def test_sampling_se_formula() -> None:
    ps = [0.0, 0.5, 1.0, 0.25]
    expected = (sum(p * (1 - p) / 4 for p in ps)) ** 0.5 / 4
    assert sampling_se(ps, 4) == pytest.approx(expected)


def test_paired_difference_known_values() -> None:
    same = paired_difference([0.5] * 30, [0.5] * 30, seed=0)
    assert same.delta == 0 and not same.distinguishable
    better = paired_difference([0.0] * 30, [1.0] * 30, seed=0)
    assert better.delta == 1.0 and better.ci95 == (1.0, 1.0) and better.distinguishable


# ----------------------------------------------------------------------------- gold answers
def test_gold_answers_read_the_way_each_benchmark_stores_them() -> None:
    assert gold_answer({"answer": "Natalia sold 48/2 = 24 clips.\n#### 1,072"}, None) == "1072"  # GSM8K
    assert gold_answer({"solution": "so $\\boxed{\\frac{1}{2}}$ and done"}, None) == "\\frac{1}{2}"  # MATH
    assert gold_answer({"answer": 23}, None) == "23"  # AIME integers
    assert gold_answer({"answer": "023"}, None) == "023"
    benches = load_benchmarks(
        (str(data_file("benchmarks/gsm8k_test.jsonl")), str(data_file("benchmarks/aime24.jsonl")))
    )
    assert benches[0].problems[0].answer == "18" and len(benches[0].problems) == 1319
    assert all(p.answer and p.answer.isdigit() for p in benches[1].problems)
    again = load_benchmarks((str(data_file("benchmarks/aime24.jsonl")),))
    assert again[0].sha256 == benches[1].sha256 and len(again[0].sha256) == 64


# --------------------------------------------------------------------------- the command
def _samples(path: Path, problems: list[dict], k: int, correct: dict[str, int], **extra: object) -> None:
    """k samples per problem; the first correct[id] of them answer correctly, the rest wrongly."""
    with path.open("w") as f:
        for p in problems:
            for i in range(k):
                answer = p["answer"] if i < correct[p["id"]] else "999999"
                f.write(
                    json.dumps(
                        {
                            "id": p["id"],
                            "benchmark": "aime24",
                            "model": "m",
                            "sample_idx": i,
                            "query": p["problem"],
                            "answer": p["answer"],
                            "response": f"<think>work</think>So the answer is $\\boxed{{{answer}}}$.",
                            "n_tokens": 10 + i,
                            **extra,
                        }
                    )
                    + "\n"
                )


def _aime(n: int = 12) -> list[dict]:
    rows = [json.loads(line) for line in data_file("benchmarks/aime24.jsonl").open()][:n]
    return [{"id": str(r["id"]), "problem": r["problem"], "answer": r["answer"]} for r in rows]


def _summary(stdout: bytes) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines()]
    summaries = [x for x in lines if x.get("eval") == "summary"]
    assert len(summaries) == 1
    return summaries[0]


def test_score_summary_fields_match_hand_computation(tmp_path: Path) -> None:
    problems = _aime()
    rng = random.Random(5)
    correct = {p["id"]: rng.randint(0, 4) for p in problems}
    _samples(tmp_path / "s.jsonl", problems, 4, correct)
    res = run_still(["eval", "score", str(tmp_path / "s.jsonl"), "--seed", "1"])
    s = _summary(res.stdout)
    cs = [correct[p["id"]] for p in problems]
    assert s["k"] == 4 and s["n_problems"] == 12 and s["n_samples"] == 48
    assert s["avg_at_k"] == pytest.approx(sum(c / 4 for c in cs) / 12)
    for kk in ("1", "2", "4"):
        assert s["pass_at_k"][kk] == pytest.approx(sum(pass_at_k(4, c, int(kk)) for c in cs) / 12)
    # majority: correct answers win when more than 2 of 4; at 2 vs 2 (wrong answers all the same) the first wins
    assert s["cons_at_k"] == pytest.approx(sum(c >= 2 for c in cs) / 12)
    assert s["verdicts"] == {"correct": sum(cs), "wrong": 48 - sum(cs)}
    lo, hi = s["ci95"]
    assert lo <= s["avg_at_k"] <= hi
    assert s["tokens"]["mean"] == pytest.approx(11.5)
    assert s["truncation_rate"] == 0 and s["no_answer_rate"] == 0
    assert s["fingerprint"]["bootstrap"] == {"seed": 1, "resamples": 10000}
    # per-sample lines come first, each verified, in input order
    samples = [json.loads(line) for line in res.lines()[:-1]]
    assert [x["sample_idx"] for x in samples[:4]] == [0, 1, 2, 3] and all("verify" in x for x in samples)
    again = run_still(["eval", "score", str(tmp_path / "s.jsonl"), "--seed", "1"])
    assert again.stdout == res.stdout


def test_truncated_sample_is_counted_as_truncated_not_wrong(tmp_path: Path) -> None:
    problems = _aime(3)
    _samples(tmp_path / "s.jsonl", problems, 2, {p["id"]: 1 for p in problems})
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    cut = json.loads(lines[1])
    cut["response"] = "<think>still thinking about the"
    cut["finish_reason"] = "length"
    lines[1] = json.dumps(cut)
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    s = _summary(run_still(["eval", "score", str(tmp_path / "s.jsonl")]).stdout)
    assert s["verdicts"] == {"correct": 3, "truncated": 1, "wrong": 2}
    assert s["truncation_rate"] == pytest.approx(1 / 6)


def test_fewer_than_k_samples_fails_loudly(tmp_path: Path) -> None:
    problems = _aime(3)
    _samples(tmp_path / "s.jsonl", problems, 4, {p["id"]: 1 for p in problems})
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last problem has 3
    res = run_still(["eval", "score", str(tmp_path / "short.jsonl"), "-o", str(tmp_path / "out.jsonl")], code=1)
    assert f"{problems[-1]['id']} (3)" in res.stderr and "fewer than k=4" in res.stderr
    assert not (tmp_path / "out.jsonl").exists()
    res = run_still(["eval", "score", "-k", "5", str(tmp_path / "s.jsonl")], code=1)
    assert "3 of 3 problems have fewer than k=5" in res.stderr
    ok = _summary(run_still(["eval", "score", "-k", "2", str(tmp_path / "s.jsonl")]).stdout)
    assert ok["k"] == 2 and ok["beyond_k"] == 6 and ok["n_samples"] == 6


def test_compare_two_runs_with_a_known_difference(tmp_path: Path) -> None:
    problems = _aime(30) if len(_aime(30)) == 30 else _aime()
    rng = random.Random(2)
    a = {p["id"]: rng.randint(0, 2) for p in problems}
    b = {pid: c + 2 for pid, c in a.items()}  # B solves two more of its 4 samples everywhere
    _samples(tmp_path / "a.jsonl", problems, 4, a)
    _samples(tmp_path / "b.jsonl", problems, 4, b)
    run_a = run_still(["eval", "score", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "ra.jsonl")])
    run_b = run_still(["eval", "score", str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "rb.jsonl")])
    assert run_a.code == run_b.code == 0
    res = run_still(["eval", "compare", str(tmp_path / "ra.jsonl"), str(tmp_path / "rb.jsonl")])
    out = json.loads(res.stdout)
    assert out["benchmark"] == "aime24" and out["n_problems"] == len(problems)
    assert out["delta"] == pytest.approx(0.5) and out["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert out["distinguishable"] and "distinguishable from zero" in res.stderr
    same = json.loads(run_still(["eval", "compare", str(tmp_path / "ra.jsonl"), str(tmp_path / "ra.jsonl")]).stdout)
    assert same["delta"] == 0 and not same["distinguishable"]


def test_report_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    problems = _aime(5)
    _samples(tmp_path / "s.jsonl", problems, 4, {p["id"]: 2 for p in problems})
    png, md = tmp_path / "p.png", tmp_path / "r.md"
    run_still(["eval", "score", str(tmp_path / "s.jsonl"), "--report", str(md), "--plot", str(png), "-o", "/dev/null"])
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1200, 450)
    text = md.read_text()
    assert "| aime24 | m | 4 | 5 | 50.0 |" in text


def test_clean_only_excludes_what_decontam_reported(tmp_path: Path) -> None:
    problems = _aime(6)
    _samples(tmp_path / "s.jsonl", problems, 2, {p["id"]: 1 for p in problems})
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text("".join(json.dumps({"query": p["problem"]}) + "\n" for p in problems[:2]))
    report = tmp_path / "report.json"
    bench = data_file("benchmarks/aime24.jsonl")
    run_still(["decontam", "--against", f"aime24={bench}", "--report", str(report), str(leaked), "-o", "/dev/null"])
    res = run_still(["eval", "score", "--clean-only", str(report), str(tmp_path / "s.jsonl")])
    s = _summary(res.stdout)
    assert s["n_problems"] == 4 and s["excluded"] == 2
    assert "left out contaminated problems: aime24 2" in res.stderr


def test_bench_fills_gold_answers_and_checksum(tmp_path: Path) -> None:
    problems = _aime(4)
    _samples(tmp_path / "s.jsonl", problems, 2, {p["id"]: 2 for p in problems})
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    for r in rows:
        del r["answer"]
    (tmp_path / "nogold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = data_file("benchmarks/aime24.jsonl")
    s = _summary(run_still(["eval", "score", "--bench", f"aime24={bench}", str(tmp_path / "nogold.jsonl")]).stdout)
    assert s["avg_at_k"] == 1.0
    assert s["fingerprint"]["dataset_sha256"] == load_benchmarks((f"aime24={bench}",))[0].sha256
    res = run_still(["eval", "score", str(tmp_path / "nogold.jsonl")], code=3)
    assert "no answer field" in res.stderr


# ------------------------------------------------------------------ end to end with a model
def test_eval_run_end_to_end_with_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    """20 problems of the carried GSM8K file, k=2, through the hf engine; every summary field checked."""
    bench = tmp_path / "gsm20.jsonl"
    bench.write_text("".join(data_file("benchmarks/gsm8k_test.jsonl").read_text().splitlines(True)[:20]))
    args = ["eval", "--model", str(tiny_model), "--bench", f"gsm20={bench}", "-k", "2", "--max-tokens", "8"]
    res = run_still([*args, "--seed", "3"])
    lines = [json.loads(line) for line in res.lines()]
    samples, (s,) = lines[:-1], lines[-1:]
    assert len(samples) == 40 and [x["sample_idx"] for x in samples[:2]] == [0, 1]
    assert {x["id"] for x in samples} == {str(i) for i in range(20)}
    assert all(x["answer"] and x["n_tokens"] <= 8 and x["temperature"] == 0.6 for x in samples)
    assert s["eval"] == "summary" and s["benchmark"] == "gsm20" and s["model"] == str(tiny_model)
    assert (s["k"], s["n_problems"], s["n_samples"], s["beyond_k"], s["excluded"]) == (2, 20, 40, 0, 0)
    verdicts = s["verdicts"]
    assert sum(verdicts.values()) == 40
    assert s["truncation_rate"] == pytest.approx(verdicts.get("truncated", 0) / 40)
    assert s["no_answer_rate"] == pytest.approx(verdicts.get("no_answer", 0) / 40)
    correct = sum(1 for x in samples if x["verify"]["verdict"] == "correct")
    assert s["avg_at_k"] == pytest.approx(correct / 40)
    assert set(s["pass_at_k"]) == {"1", "2"} and 0 <= s["cons_at_k"] <= 1
    lo, hi = s["ci95"]
    assert lo <= s["avg_at_k"] <= hi and s["sampling_se"] >= 0
    n_tokens = [x["n_tokens"] for x in samples]
    assert s["tokens"]["mean"] == pytest.approx(sum(n_tokens) / 40)
    fp = s["fingerprint"]
    assert fp["engine"] == "hf" and fp["seed"] == 3 and fp["mode"] == "run"
    assert fp["model"] == str(tiny_model) and len(fp["weights_xxh3_128"]) == 32
    assert fp["libraries"]["transformers"] and fp["libraries"]["torch"]
    assert fp["sampling_params"] == {"temperature": 0.6, "top_p": 0.95, "max_tokens": 8}
    assert fp["prompt"]["instruction"].startswith("Please reason step by step")
    assert fp["dataset_sha256"] == load_benchmarks((f"gsm20={bench}",))[0].sha256
    # per-sample seeds: another batch size gives the same samples
    again = run_still([*args, "--seed", "3", "--batch-size", "3"])
    assert [json.loads(line)["response"] for line in again.lines()[:-1]] == [x["response"] for x in samples]


def test_eval_run_killed_then_resumed_has_no_duplicates_or_gaps(tiny_model: Path, tmp_path: Path) -> None:
    """kill -9 mid-run leaves FILE.journal; --resume generates only what is missing and ends with
    the output of an uninterrupted run (per-sample seeds make the samples the same)."""
    import subprocess
    import sys
    import time

    bench = tmp_path / "gsm5.jsonl"
    bench.write_text("".join(data_file("benchmarks/gsm8k_test.jsonl").read_text().splitlines(True)[:5]))
    args = ["eval", "--model", str(tiny_model), "--bench", f"gsm5={bench}", "-k", "2", "--max-tokens", "24"]
    args += ["--batch-size", "1"]
    whole = tmp_path / "whole.jsonl"
    run_still([*args, "-o", str(whole)])
    assert not (tmp_path / "whole.jsonl.journal").exists()

    out, journal = tmp_path / "out.jsonl", tmp_path / "out.jsonl.journal"
    proc = subprocess.Popen([sys.executable, "-m", "still", *args, "-o", str(out)], stderr=subprocess.DEVNULL)
    while proc.poll() is None and not (journal.exists() and journal.read_bytes().count(b"\n") >= 4):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9 and not out.exists(), "the run ended before it could be killed"
    done = journal.read_bytes().count(b"\n") - 1  # the first line describes the run
    assert 3 <= done < 10

    res = run_still([*args, "-o", str(out)], code=2)
    assert "--resume" in res.stderr  # an existing journal is never silently overwritten
    res = run_still([*args, "-o", str(out), "--resume"])
    assert f"resumed {done} of 10 samples" in res.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not journal.exists()
    keys = [(x["id"], x["sample_idx"]) for x in map(json.loads, out.read_bytes().splitlines()[:-1])]
    assert len(keys) == len(set(keys)) == 10


def test_score_a_code_benchmark_runs_its_tests_in_the_sandbox(tmp_path: Path) -> None:
    """HumanEval problems from --bench: tests and entry point come from the benchmark by task id;
    canonical solutions pass, a broken one fails, all in the sandbox."""
    rows = [json.loads(line) for line in data_file("code/humaneval.jsonl").read_text().splitlines()[:3]]
    bench = tmp_path / "he.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = []
    for r in rows:
        good = "```python\n" + r["prompt"] + r["canonical_solution"] + "```"
        bad = "```python\n" + r["prompt"] + "    return None\n```"
        samples += [{"task_id": r["task_id"], "sample_idx": 0, "response": good}]
        samples += [{"task_id": r["task_id"], "sample_idx": 1, "response": bad}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    res = run_still(
        ["eval", "score", "--bench", f"humaneval={bench}", "--id-field", "task_id", str(tmp_path / "s.jsonl")]
    )
    lines = [json.loads(line) for line in res.lines()]
    verdicts = [x["verify"]["verdict"] for x in lines[:-1]]
    assert verdicts[0::2] == ["pass"] * 3 and all(v != "pass" for v in verdicts[1::2])
    s = lines[-1]
    assert s["benchmark"] == "humaneval" and s["k"] == 2 and s["avg_at_k"] == 0.5 and s["pass_at_k"]["2"] == 1.0


def test_weights_fingerprint_is_the_weights_only(tmp_path: Path) -> None:
    """Byte-identical weights fingerprint the same wherever they are and whatever a trainer left
    beside them; other weights do not."""
    from still.core.eval_run import weights_fingerprint

    for name, extra in (("a", b"run a"), ("b", b"run b, another output folder")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        (folder / "training_args.bin").write_bytes(extra)
    a, b = weights_fingerprint(str(tmp_path / "a")), weights_fingerprint(str(tmp_path / "b"))
    assert a["weights_xxh3_128"] == b["weights_xxh3_128"] and a["weight_files"] == 1
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}     !")
    assert weights_fingerprint(str(tmp_path / "b"))["weights_xxh3_128"] != a["weights_xxh3_128"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "pytorch_model.bin").write_bytes(b"weights")
    (legacy / "training_args.bin").write_bytes(b"args")
    assert weights_fingerprint(str(legacy))["weight_files"] == 1
