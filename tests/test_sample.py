"""`still sample`: order independence, exact quotas, shortfalls, presets, bands, stages, memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_still

from still.core.sample import apportion, coefficient_of_variation, stage_of_values

DOMAINS = ["math", "code", "science", "other"]


def make_rows(n_queries: int = 300, k: int = 4, seed: int = 1) -> list[dict]:
    """Denormalised rows: k responses per query with grade, verify, difficulty and n_tokens."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_queries):
        domain = DOMAINS[q % 4]
        level = f"L{1 + q % 5}"
        scores = [rng.choice([0.0, 0.5, 1.0]) for _ in range(k)]
        passed = sum(s > 0.99 for s in scores)
        mean = sum(scores) / k
        cv = coefficient_of_variation(scores, 1)
        for i in range(k):
            rows.append(
                {
                    "id": f"q{q}",
                    "query": f"problem {q}",
                    "response": f"answer {q}.{i} " + "x" * rng.randint(0, 50),
                    "domain": domain,
                    "difficulty": level,
                    "sample_idx": i,
                    "model": "r1",
                    "n_tokens": rng.randint(10, 400),
                    "verify": {"verdict": "correct" if scores[i] > 0.99 else "wrong", "score": scores[i]},
                    "grade": {"r1": {"pass_rate": passed / k, "mean_score": mean, "cv": cv, "n": k, "n_truncated": 0}},
                }
            )
    return rows


def dump(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def shuffled_groups(rows: list[dict], seed: int) -> list[dict]:
    """Shuffle queries and the responses inside each query (adjacent groups stay adjacent)."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["id"], []).append(r)
    order = list(groups.values())
    rng.shuffle(order)
    out = []
    for g in order:
        g = g[:]
        rng.shuffle(g)
        out.extend(g)
    return out


ROWS = make_rows()

SELECTIONS = [
    "--quota domain=math:40,code:30,science:20,other:7 --per-query 2",
    "--difficulty-weights L1=4,L2=3,L3=2,L4=1 -n 100",
    "-n 50 --per-query 1 --pass-rate 0.25..0.75",
    "--length-top 0.1",
    "--length-band 0.2..0.5 --per-query 1",
    "--cv-min math=0.5,*=0.1",
    "--preset deepdistill-stage1 --cv-threshold math=0.5,*=0.3",
    "--preset deepdistill-stage2 --cv-threshold *=0.4 -n 20",
    "--preset deepdistill-stage1 --cv-threshold *=0.4 --query-stats adjacent",
    "--preset openthoughts --length-top 0.5 --per-query 2",
]


@pytest.mark.parametrize("args", SELECTIONS)
def test_shuffled_and_chunked_input_gives_the_same_set(args: str, tmp_path: Path) -> None:
    base = run_still(f"sample --seed 3 {args}", stdin=dump(ROWS))
    assert base.lines(), base.stderr
    again = run_still(f"sample --seed 3 {args}", stdin=dump(ROWS))
    assert again.stdout == base.stdout  # same input order: byte-identical
    shuffled = shuffled_groups(ROWS, 5)
    assert shuffled != ROWS
    other = run_still(f"sample --seed 3 {args}", stdin=dump(shuffled))
    assert sorted(other.lines()) == sorted(base.lines())
    # the same input split into three files (chunking), in yet another order
    parts = shuffled_groups(ROWS, 9)
    files = []
    for i in range(3):
        path = tmp_path / f"part{i}.jsonl"
        path.write_bytes(dump(parts[i * len(parts) // 3 : (i + 1) * len(parts) // 3]))
        files.append(str(path))
    chunked = run_still(["sample", "--seed", "3", *args.split(), *files])
    assert sorted(chunked.lines()) == sorted(base.lines())
    # a different seed picks a different set where the selection is a sample
    if " -n " in f" {args} " or "--quota" in args:
        reseeded = run_still(f"sample --seed 4 {args}", stdin=dump(ROWS))
        assert sorted(reseeded.lines()) != sorted(base.lines())


def test_exact_quotas_and_per_query_cap(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    res = run_still(
        f"sample --quota domain=math:40,code:30,science:20,other:7 --per-query 2 --stats {stats}",
        stdin=dump(ROWS),
    )
    out = [json.loads(x) for x in res.lines()]
    assert Counter(r["domain"] for r in out) == {"math": 40, "code": 30, "science": 20, "other": 7}
    assert max(Counter(r["id"] for r in out).values()) == 2
    summary = json.loads(stats.read_text())
    assert summary["read"] == len(ROWS) and summary["written"] == 97
    assert summary["sample"]["shortfall"] == 0
    assert sum(summary["dropped"].values()) == len(ROWS) - 97
    assert "quota full" in summary["dropped"] and "per-query limit" in summary["dropped"]


def test_quota_drops_unlisted_values() -> None:
    res = run_still("sample --quota domain=math:5", stdin=dump(ROWS))
    assert [json.loads(x)["domain"] for x in res.lines()] == ["math"] * 5
    assert "not in quota" in res.stderr


def test_shortfall_is_reported(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    # 75 math queries x 4 responses = 300 math rows; ask for 500, and 10 of a missing domain
    res = run_still(f"sample --quota domain=math:500,poetry:10,code:3 --stats {stats}", stdin=dump(ROWS))
    out = [json.loads(x) for x in res.lines()]
    assert Counter(r["domain"] for r in out) == {"math": 300, "code": 3}
    assert "stratum domain=math: selected 300 of 500, SHORTFALL 200" in res.stderr
    assert "stratum domain=poetry: selected 0 of 10, SHORTFALL 10" in res.stderr
    info = json.loads(stats.read_text())["sample"]
    assert info["shortfall"] == 210
    by = {s["stratum"]["domain"]: s for s in info["strata"]}
    assert by["math"] == {"stratum": {"domain": "math"}, "target": 500, "selected": 300, "shortfall": 200}
    assert by["code"]["shortfall"] == 0


def test_difficulty_weights_and_match(tmp_path: Path) -> None:
    res = run_still("sample --difficulty-weights L1=4,L2=3,L3=2,L4=1 -n 100", stdin=dump(ROWS))
    got = Counter(json.loads(x)["difficulty"] for x in res.lines())
    assert got == {"L1": 40, "L2": 30, "L3": 20, "L4": 10}
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"difficulty": lv}) + "\n" for lv in ["L1"] * 6 + ["L5"] * 3 + ["L2"]))
    res = run_still(f"sample --match {ref}", stdin=dump(ROWS))
    assert Counter(json.loads(x)["difficulty"] for x in res.lines()) == {"L1": 6, "L5": 3, "L2": 1}
    res = run_still(f"sample --match {ref} -n 50", stdin=dump(ROWS))
    assert Counter(json.loads(x)["difficulty"] for x in res.lines()) == {"L1": 30, "L5": 15, "L2": 5}


def test_quota_crossed_with_difficulty_weights() -> None:
    res = run_still("sample --quota domain=math:10,code:20 --difficulty-weights L1=1,L2=1", stdin=dump(ROWS))
    got = Counter((json.loads(x)["domain"], json.loads(x)["difficulty"]) for x in res.lines())
    assert got == {("math", "L1"): 5, ("math", "L2"): 5, ("code", "L1"): 10, ("code", "L2"): 10}


def test_pass_rate_band_on_grade_and_flat_fields() -> None:
    res = run_still("sample --pass-rate 0.25..0.75 --model r1", stdin=dump(ROWS))
    out = [json.loads(x) for x in res.lines()]
    assert out and all(0.25 <= r["grade"]["r1"]["pass_rate"] <= 0.75 for r in out)
    expected = sum(1 for r in ROWS if 0.25 <= r["grade"]["r1"]["pass_rate"] <= 0.75)
    assert len(out) == expected
    assert f"pass rate out of band {len(ROWS) - expected}" in res.stderr
    # AM-40M style flat fields
    flat = [{"question": f"q{i}", "answer": "a", "pass_rate_r1": i / 10, "category": "math"} for i in range(11)]
    res = run_still("sample --pass-rate 0.3..0.5 --pass-rate-field pass_rate_r1", stdin=dump(flat))
    assert [json.loads(x)["pass_rate_r1"] for x in res.lines()] == [0.3, 0.4, 0.5]


def test_length_top_is_exact_with_ties() -> None:
    rows = [{"id": f"q{i}", "response": f"r{i}", "n_tokens": 100 if i < 10 else i} for i in range(40)]
    # lengths: ten of 100 (the longest), then 10..39; top 25% = 10 rows = exactly the ties at 100
    res = run_still("sample --length-top 0.25", stdin=dump(rows))
    assert sorted(json.loads(x)["n_tokens"] for x in res.lines()) == [100] * 10
    # top 20% = 8 of the 10 tied rows, chosen by priority, the same for any order
    res = run_still("sample --length-top 0.2", stdin=dump(rows))
    assert [json.loads(x)["n_tokens"] for x in res.lines()] == [100] * 8
    res2 = run_still("sample --length-top 0.2", stdin=dump(list(reversed(rows))))
    assert sorted(res2.lines()) == sorted(res.lines())
    # a middle band by characters
    rows = [{"id": f"q{i}", "response": "y" * i} for i in range(1, 101)]
    res = run_still("sample --length-band 0.5..0.9 --length-unit chars", stdin=dump(rows))
    assert sorted(len(json.loads(x)["response"]) for x in res.lines()) == list(range(51, 91))
    assert "outside band 60" in res.stderr


def test_difficulty_top_uses_numeric_levels() -> None:
    rows = [{"id": f"q{i}", "response": "r", "difficulty": i % 10} for i in range(100)]
    res = run_still("sample --difficulty-top 0.3", stdin=dump(rows))
    assert sorted({json.loads(x)["difficulty"] for x in res.lines()}) == [7, 8, 9]


def test_paper_cv_examples_with_both_ddofs() -> None:
    # Constructed score lists that reproduce the CVs of DeepDistill's worked examples (the
    # research notes give the CVs, not the raw scores): QB 0.632, QC 0.101, QD 0.177 need the
    # sample std (ddof=1); the population std (ddof=0) gives 0.566 for QB, as the notes say.
    qb, qc, qd = [0.1, 0.3, 0.5, 0.7, 0.9], [0.6, 0.7, 0.7, 0.7, 0.8], [0.6, 0.8, 0.8, 0.8, 1.0]
    assert [round(coefficient_of_variation(s, 1) or 0, 3) for s in (qb, qc, qd)] == [0.632, 0.101, 0.177]
    assert [round(coefficient_of_variation(s, 0) or 0, 3) for s in (qb, qc, qd)] == [0.566, 0.09, 0.158]
    assert coefficient_of_variation([0.0, 0.0], 1) is None  # mu == 0: undefined
    # through the CLI, aggregated from verify.score over adjacent lines: a CV cut at 0.6 keeps
    # QB only with ddof=1 and nothing with ddof=0; a cut at 0.17 separates QD from QC
    rows = [
        {"id": name, "domain": "code", "response": f"{name}{i}", "verify": {"score": s}}
        for name, scores in (("QB", qb), ("QC", qc), ("QD", qd))
        for i, s in enumerate(scores)
    ]
    ids = lambda res: sorted({json.loads(x)["id"] for x in res.lines()})  # noqa: E731
    assert ids(run_still("sample --cv-min 0.6 --cv-ddof 1", stdin=dump(rows))) == ["QB"]
    assert ids(run_still("sample --cv-min 0.6 --cv-ddof 0", stdin=dump(rows))) == []
    assert ids(run_still("sample --cv-min 0.17", stdin=dump(rows))) == ["QB", "QD"]
    assert ids(run_still("sample --cv-min 0.17 --cv-ddof 0", stdin=dump(rows))) == ["QB"]
    assert "note:" not in run_still("sample --cv-min 0.17", stdin=dump(rows)).stderr
    binary = [{"id": f"q{i // 4}", "response": str(i), "verify": {"score": float(i % 3 == 0)}} for i in range(40)]
    assert "CV is then a function of the pass rate" in run_still("sample --cv-min 0.5", stdin=dump(binary)).stderr


def stage_rows() -> list[dict]:
    """A constructed Stage I example, one query per rule of Algorithm 1."""
    spec = [
        # id, category, scores
        ("hard-none-pass", "math", [0.0, 0.5, 0.9]),  # max <= 0.99: dropped
        ("challenging", "code", [1.0, 0.0, 0.2, 1.0]),  # CV high: keep only the two passing
        ("easy-math", "math", [1.0, 1.0, 1.0]),  # CV 0: easy, math: dropped
        # science on DeepDistill's 0-5 scale (run with --pass-threshold science=4.99)
        ("science-ok", "science", [5.0, 1.0, 2.0]),  # passes once, CV high: keep the passing one
        ("science-low", "science", [4.5, 4.0, 4.9]),  # max 4.9 <= 4.99: dropped
    ]
    spec += [(f"easy-other-{i}", "other", [0.8, 0.8]) for i in range(40)]  # > 0.7, CV 0: coin flip
    return [
        {"id": qid, "domain": cat, "response": f"{qid}/{i}", "verify": {"score": s}}
        for qid, cat, scores in spec
        for i, s in enumerate(scores)
    ]


def test_deepdistill_stage1_rules(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    res = run_still(
        f"sample --preset deepdistill-stage1 --cv-threshold *=0.3 --pass-threshold science=4.99 --stats {stats}",
        stdin=dump(stage_rows()),
    )
    out = [json.loads(x) for x in res.lines()]
    by_id = Counter(r["id"] for r in out)
    assert "hard-none-pass" not in by_id and "easy-math" not in by_id and "science-low" not in by_id
    assert by_id["challenging"] == 2
    assert all(r["verify"]["score"] == 1.0 for r in out if r["id"] == "challenging")
    assert by_id["science-ok"] == 1
    easy_kept = [q for q in by_id if q.startswith("easy-other")]
    assert 10 <= len(easy_kept) <= 30  # kept with probability 0.5, whole queries
    assert all(by_id[q] == 2 for q in easy_kept)
    dropped = json.loads(stats.read_text())["dropped"]
    assert dropped["no passing response"] == 6
    assert dropped["failing response of challenging query"] == 2 + 2
    assert dropped["easy query"] == 3 + 2 * (40 - len(easy_kept))
    # the coin is seeded: another seed keeps a different subset of the easy queries
    other = run_still(
        "sample --preset deepdistill-stage1 --cv-threshold *=0.3 --pass-threshold science=4.99 --seed 1",
        stdin=dump(stage_rows()),
    )
    assert {json.loads(x)["id"] for x in other.lines()} != set(by_id)
    # a category without a CVt is an error naming the line
    res = run_still("sample --preset deepdistill-stage1 --cv-threshold math=0.3", stdin=dump(stage_rows()), code=2)
    assert "<stdin>:" in res.stderr and "code" in res.stderr


def test_deepdistill_presets_require_cv_thresholds() -> None:
    res = run_still("sample --preset deepdistill-stage1", stdin=dump(stage_rows()), code=2)
    assert "--cv-threshold" in res.stderr


def test_deepdistill_stage2_highest_cv_one_response_each() -> None:
    # continuous scores: CVs differ per query; keep CV > 0.2, the 3 highest-CV queries
    rows = []
    cvs = {}
    for q in range(8):
        scores = [1.0, 1.0 - 0.1 * q, 1.0 - 0.05 * q]
        cvs[f"q{q}"] = coefficient_of_variation(scores, 1) or 0.0
        rows += [
            {"id": f"q{q}", "domain": "math", "response": f"{q}/{i}", "verify": {"score": s}}
            for i, s in enumerate(scores)
        ]
    res = run_still("sample --preset deepdistill-stage2 --cv-threshold *=0.2 -n 3", stdin=dump(rows))
    out = [json.loads(x) for x in res.lines()]
    eligible = sorted((q for q in cvs if cvs[q] > 0.2), key=lambda q: -cvs[q])
    assert [r["id"] for r in out] == eligible[:3]  # highest CV first, one response each
    res = run_still("sample --preset deepdistill-stage2 --cv-threshold *=0.2", stdin=dump(rows))
    assert sorted(json.loads(x)["id"] for x in res.lines()) == sorted(eligible)


def test_openthoughts_preset_defaults_to_16_per_query() -> None:
    rows = [{"id": f"q{q}", "response": f"{q}/{i}", "n_tokens": q} for q in range(4) for i in range(20)]
    res = run_still("sample --preset openthoughts --length-top 0.5", stdin=dump(rows))
    got = Counter(json.loads(x)["id"] for x in res.lines())
    assert got == {"q2": 16, "q3": 16}
    assert "per-query limit 8" in res.stderr


def test_stages_write_curriculum_files(tmp_path: Path) -> None:
    prefix = tmp_path / "cur"
    res = run_still(f"sample --stages 2 --stage-by difficulty -o {prefix} -n 200", stdin=dump(ROWS))
    s1 = [json.loads(x) for x in (tmp_path / "cur.stage1.jsonl").read_text().splitlines()]
    s2 = [json.loads(x) for x in (tmp_path / "cur.stage2.jsonl").read_text().splitlines()]
    assert len(s1) + len(s2) == 200
    assert max(r["difficulty"] for r in s1) < min(r["difficulty"] for r in s2)
    assert "cur.stage1.jsonl" in res.stderr
    assert stage_of_values({"L1": 5, "L2": 5, "L10": 5, "L3": 5}, 2) == {"L1": 0, "L2": 0, "L3": 1, "L10": 1}
    res = run_still("sample --stages 2", stdin=dump(ROWS), code=2)
    assert "-o PREFIX" in res.stderr


def test_apportion_is_exact() -> None:
    assert apportion(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert sum(apportion(997, {"a": 0.3, "b": 0.5, "c": 0.2}).values()) == 997


def test_bad_input_names_source_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "grade": {"m": {"pass_rate": 0.5}}}\n{"id": "b", "grade": {"m": {}}}\n')
    res = run_still(f"sample --pass-rate 0..1 {bad}", code=3)
    assert f"{bad}:2: no grade.m.pass_rate" in res.stderr
    for args in ("-n 1", "--length-top 0.5"):  # the band spools stdin to a file: still named <stdin>
        res = run_still(f"sample {args}", stdin=b'{"id": 1, "n_tokens": 3}\nnot json\n', code=3)
        assert "<stdin>:2: invalid JSON" in res.stderr
    res = run_still("sample --cv-min 0.1 --query-stats adjacent", stdin=b'{"id": "a", "response": "r"}\n', code=3)
    assert "<stdin>:1: no numeric verify.score" in res.stderr
    res = run_still("sample --quota domain", stdin=b"", code=2)
    assert "--quota" in res.stderr


def test_help_lists_the_selections() -> None:
    res = run_still("sample --help")
    for option in (
        "--quota",
        "--difficulty-weights",
        "--match",
        "--pass-rate",
        "--cv-min",
        "--length-top",
        "--per-query",
        "--preset",
        "--stages",
        "--cv-ddof",
        "--seed",
    ):
        assert option in res.out


MEMORY_SCRIPT = r"""
import json, resource, subprocess, sys, threading
rows = int(sys.argv[1])
proc = subprocess.Popen([sys.executable, "-m", "still", "sample", "-q", "--quota",
                         "domain=math:2000,code:2000", "--per-query", "2", "--pass-rate", "0.25..1"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
out = []
reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
reader.start()
pad = "z" * 200
w = proc.stdin
buf = []
for i in range(rows):
    q = i // 4
    buf.append('{"id":"q%d","domain":"%s","response":"%d %s","n_tokens":%d,"grade":{"r1":{"pass_rate":%s,"cv":0.5}}}\n'
               % (q, ("math", "code", "science")[q % 3], i, pad, i % 997, (0.0, 0.25, 0.5, 1.0)[q % 4]))
    if len(buf) == 4096:
        w.write("".join(buf).encode()); buf = []
w.write("".join(buf).encode()); w.close()
reader.join(); proc.wait()
assert proc.returncode == 0
print(len(out[0].splitlines()), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
def test_memory_stays_flat_on_a_million_rows() -> None:
    def peak_kib(rows: int) -> int:
        res = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(rows)], capture_output=True, text=True, check=True, timeout=300
        )
        selected, rss = res.stdout.split()
        assert int(selected) == 4000
        return int(rss)

    small = peak_kib(100_000)
    large = peak_kib(1_000_000)
    # 10x the rows (~250 MB piped through) may not grow the peak by more than 16 MiB
    assert large - small < 16 * 1024, (small, large)


def test_pass_rate_from_adjacent_verify_scores_and_from_grade_agree() -> None:
    # ROWS carry both: grade.r1.pass_rate and per-response verify.score (passing: > 0.99 in every
    # domain, science's default 0.998 included)
    via_grade = run_still("sample --pass-rate 0.5..0.75", stdin=dump(ROWS))
    stripped = [{k: v for k, v in r.items() if k != "grade"} for r in ROWS]
    via_scores = run_still("sample --pass-rate 0.5..0.75", stdin=dump(stripped))
    assert len(via_scores.lines()) == len(via_grade.lines()) > 0
    assert {json.loads(x)["id"] for x in via_scores.lines()} == {json.loads(x)["id"] for x in via_grade.lines()}


def test_adjacent_stats_reject_interleaved_queries() -> None:
    # round-robin order (sample 0 of every query, then sample 1 ...) would give one-line groups
    rows = [{"id": f"q{q}", "response": f"{q}/{i}", "verify": {"score": i / 2}} for i in range(3) for q in range(5)]
    res = run_still("sample --cv-min 0.1", stdin=dump(rows), code=3)
    assert "<stdin>:6: query 'q0' continues after other queries (its lines started at <stdin>:1)" in res.stderr


def test_band_edges_hold_only_what_they_keep() -> None:
    from still.core.sample import _BandCut

    # 1000 ties at the lowest value; the top 10% of 1100 (110 rows) takes all 100 higher rows and
    # 10 of the ties: the edge heap holds 10 ("high" mode), not 1000
    hist = Counter({5.0: 1000, **{float(10 + i): 1 for i in range(100)}})
    cut = _BandCut.from_histogram(hist, (0.9, 1.0))
    assert cut.edges == {5.0: (990, 1000, False, 10)}
    # a band inside the ties: positions [100, 300) of them: 300 held ("low" mode)
    cut = _BandCut.from_histogram(Counter({1.0: 1000}), (0.1, 0.3))
    assert cut.edges == {1.0: (100, 300, True, 300)}


def test_band_inside_one_tied_value_is_exact_and_order_free() -> None:
    rows = [{"id": f"q{i}", "response": f"r{i}", "n_tokens": 7} for i in range(50)]
    res = run_still("sample --length-band 0.2..0.6", stdin=dump(rows))
    assert len(res.lines()) == 20
    res2 = run_still("sample --length-band 0.2..0.6", stdin=dump(rows[::-1]))
    assert sorted(res2.lines()) == sorted(res.lines())
    top = run_still("sample --length-top 0.4", stdin=dump(rows))  # positions [30, 50) of the ties
    low = run_still("sample --length-band 0..0.6", stdin=dump(rows))  # positions [0, 30)
    assert len(top.lines()) == 20 and len(low.lines()) == 30
    assert set(top.lines()) | set(low.lines()) == set(dump(rows).splitlines())


def test_unusable_lines_follow_on_error(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "response": "r", "n_tokens": i} for i in range(10)]
    rows[3] = {"id": "q3", "response": "r"}  # no n_tokens
    data = dump(rows)
    res = run_still("sample --length-top 0.5", stdin=data, code=3)
    assert "<stdin>:4: no n_tokens" in res.stderr
    stats = tmp_path / "s.json"
    res = run_still(f"sample --length-top 0.5 --on-error skip --stats {stats}", stdin=data)
    assert sorted(json.loads(x)["n_tokens"] for x in res.lines()) == [5, 6, 7, 8, 9]  # top half of 9
    info = json.loads(stats.read_text())
    assert info["errors"] == {"no n_tokens": 1} and info["written"] == 5 and info["read"] == 10
    quarantine = tmp_path / "bad.jsonl"
    run_still(
        f"sample --pass-rate 0..1 --pass-rate-field pr --on-error quarantine={quarantine}",
        stdin=b'{"id": "a", "pr": 0.5}\n{"id": "b", "pr": "x"}\n',
    )
    assert quarantine.read_bytes() == b'{"id": "b", "pr": "x"}\n'


def _variety_rows() -> list[dict]:
    """make_rows plus the awkward cases the fast path must treat like the general one."""
    rng = random.Random(5)
    rows = make_rows(120, k=4, seed=3)
    for i, r in enumerate(rows):
        roll = rng.random()
        if roll < 0.05:
            r["id"] = i % 40  # a numeric id
        elif roll < 0.08:
            del r["id"]  # a derived id from the query
        elif roll < 0.10:
            r["domain"] = 7  # a numeric quota value
        elif roll < 0.12:
            del r["domain"]
        elif roll < 0.14:
            r["grade"]["r1"]["pass_rate"] = "high"  # unusable: --on-error decides
        elif roll < 0.16:
            del r["grade"]  # unusable
        elif roll < 0.18:
            r["grade"]["r1"]["cv"] = None  # a valid, undefined CV
        elif roll < 0.22:
            r["grade"]["r1"]["cv"] = 0.3  # exactly at a --cv-min threshold
        elif roll < 0.24:
            r["model"] = rng.choice([None, 1.5, True, ["r", 1]])  # priorities format any value
        elif roll < 0.26:
            del r["sample_idx"]
        elif roll < 0.30:
            del r["response"]
            r["messages"] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"m{i}"}]
    rows += [dict(rows[3]), dict(rows[3]), dict(rows[10])]  # exact duplicate lines
    assert sum("messages" in r for r in rows) >= 3, "the chat-messages case must occur"
    return rows


@pytest.mark.parametrize(
    "options",
    [
        {"per_query": 1, "quota_field": "domain", "quota": {"math": 20, "code": 15, "7": 3, "other": 200}},
        {"per_query": 2, "quota_field": "domain", "quota": {"math": 30, "code": 5}, "pass_rate_band": (0.25, 0.75)},
        {"total": 40, "pass_rate_band": (0.0, 0.5)},
        {"total": 25, "level_weights": {"L1": 2, "L3": 1}, "cv_min": {"math": 0.3, "*": 0.1}},
        {"quota_field": "domain", "quota": {"math": 9, "science": 4}, "level_weights": {"L2": 1, "L4": 1}},
        {"pass_rate_band": (0.25, 1.0)},
        {"per_query": 3},
        {},
    ],
)
def test_fast_path_matches_general_path(options: dict) -> None:
    from still.core.jsonl import Record
    from still.core.sample import SampleConfig, run_sample
    from still.core.stats import RunStats

    rows = _variety_rows()
    for order_seed in (0, 1):
        random.Random(order_seed).shuffle(rows)
        results = []
        # the fast path, releasing the selection unparsed (what the CLI writes), against the general one
        for fast in (True, False):
            stats = RunStats("sample")
            stats.on_bad = lambda source, line, message, raw, stats=stats: stats.error(message.split(":")[0])
            records = [Record(json.loads(line), line, "t", n) for n, line in enumerate(dump(rows).splitlines(True), 1)]
            stats.read = len(records)
            config = SampleConfig(seed=order_seed, parse_selected=not fast, **options)
            selected = run_sample(iter(records), config, stats, fast=fast)
            out = [rec.to_bytes() for rec in selected]
            stats.written = len(out)
            stats.check_balance()
            results.append((out, dict(stats.dropped), dict(stats.errors), stats.extra["sample"]))
        assert results[0] == results[1]
        assert results[0][0]  # something was selected


def test_passing_keeps_only_passing_responses() -> None:
    rows = [
        {"id": "a", "domain": "math", "response": "r1", "verify": {"score": 1.0}},
        {"id": "a", "domain": "math", "response": "r2", "verify": {"score": 0.0}},
        {"id": "b", "domain": "code", "response": "r3", "verify": {"score": 0.5}},
        {"id": "b", "domain": "code", "response": "r4", "verify": {"score": 1.0}},
        {"id": "c", "domain": "other", "response": "r5", "verify": {"score": 0.75}},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    res = run_still("sample --passing", stdin=data)
    assert [json.loads(x)["response"] for x in res.lines()] == ["r1", "r4", "r5"]
    assert "failing response 2" in res.stderr
    res = run_still("sample --passing --per-query 1 --pass-threshold other=0.8", stdin=data)
    assert sorted(json.loads(x)["response"] for x in res.lines()) == ["r1", "r4"]
    missing = data + json.dumps({"id": "d", "domain": "math", "response": "r6"}) + "\n"
    res = run_still("sample --passing", stdin=missing, code=3)
    assert "<stdin>:6: no numeric verify.score" in res.stderr


def test_the_model_comes_from_the_first_graded_line_and_other_models_are_reported() -> None:
    """Without --model the first graded line names the model; a line graded only for another
    model is not read as ungraded but reported with the reason and the way out."""
    rows = [
        {"id": "a", "response": "r", "grade": {"r1": {"pass_rate": 0.5}}},
        {"id": "b", "response": "r", "grade": {"qwen": {"pass_rate": 0.5}}},
    ]
    res = run_still("sample --pass-rate 0..1", stdin=dump(rows), code=3)
    hint = "(graded for qwen; the model r1 came from the first graded line: choose one with --model)"
    assert f"<stdin>:2: no grade.r1.pass_rate {hint}" in res.stderr
    res = run_still("sample --pass-rate 0..1 --model qwen --on-error skip", stdin=dump(rows))
    assert [json.loads(x)["id"] for x in res.lines()] == ["b"]
    assert "(graded for" not in res.stderr
