"""`still decontam`: measured recall on a planted suite, false positives, index, output shapes."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, data_file, run_still

from still.core.decontam import (
    DecontamIndex,
    IndexParams,
    Matcher,
    canonical_tokens,
    load_benchmarks,
    ngram_size,
)

sys.path.insert(0, str(ROOT / "bench"))
from decontam_suite import planted_suite  # noqa: E402

BENCH_FILES = ("aime24", "amc23", "math500", "gsm8k_test")


def bench_path(name: str) -> str:
    return str(data_file(f"benchmarks/{name}.jsonl"))


def bench_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in Path(bench_path(name)).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def all_benchmarks():
    return load_benchmarks([bench_path(n) for n in BENCH_FILES], None)


@pytest.fixture(scope="module")
def matcher(all_benchmarks):
    return Matcher(DecontamIndex.build(all_benchmarks), IndexParams())


def records(*queries: str) -> str:
    return "".join(json.dumps({"id": f"r{i}", "query": q}) + "\n" for i, q in enumerate(queries))


# ------------------------------------------------------------------------------ the planted suite


def test_planted_suite_meets_recall_and_false_positive_targets(all_benchmarks, matcher):
    offsets, start = {}, 0
    for bench in all_benchmarks:
        offsets[bench.name] = start
        start += len(bench.items)
    items = [(b.name, i, text) for b in all_benchmarks for i, (_, text) in enumerate(b.items)]
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    for planted in planted_suite(items, seed=11, clean=3000):
        hits = matcher.match(planted.text)
        total[planted.kind] += 1
        if planted.kind == "clean":
            found[planted.kind] += bool(hits)
            continue
        wanted = offsets[planted.bench] + planted.item
        mine = [h for h in hits if h.item == wanted]
        found[planted.kind] += bool(mine)
        methods.update(h.method for h in mine[:1])
    assert total["verbatim"] == total["reformatted"] == total["embedded"] == 1889  # 30 + 40 + 500 + 1319
    assert total["numbers"] > 1800 and total["clean"] == 3000
    recall = {k: found[k] / total[k] for k in ("verbatim", "reformatted", "numbers", "embedded")}
    assert recall["verbatim"] == 1.0, recall
    assert recall["reformatted"] == 1.0, recall
    assert recall["numbers"] >= 0.95, recall
    assert recall["embedded"] >= 0.99, recall
    assert found["clean"] / total["clean"] <= 0.001, found["clean"]
    assert set(methods) <= {"ngram", "containment", "digits"} and methods["digits"] > 1000


def test_normalisation_ignores_latex_spacing_punctuation_and_zero_padding():
    base = canonical_tokens("Find $\\frac{1}{2}(x+3)$, then compute $f(023)$.")
    for variant in (
        "find \\dfrac { 1 } { 2 } \\left( x + 3 \\right) then   compute f(23)",
        "FIND $\\tfrac{1}{2}\\left(x+3\\right)$; THEN COMPUTE $f( 0023 )$!",
        "Find \\(\\displaystyle\\frac{1}{2}(x+3)\\) then compute \\(f(23)\\)",
    ):
        assert canonical_tokens(variant) == base, variant
    assert canonical_tokens("3 × 4 ≤ 12") == canonical_tokens("$3 \\times 4 \\le 12$")
    assert canonical_tokens("$(04r^6)(0010x)$") == canonical_tokens("(4r^{6}) (10x)")
    assert canonical_tokens("3.5") != canonical_tokens("35")
    assert ngram_size(60) == 13 and ngram_size(20) == 8 and ngram_size(5) == 5


def test_aime_item_with_zero_padded_numbers_and_answer_is_found(matcher):
    row = bench_rows("aime24")[0]
    padded = row["problem"].replace("$9$", "$009$").replace("$s+2$", "$s + 02$")
    hits = matcher.match(f"{padded}\nThe answer is $\\boxed{{{row['answer']}}}$ (i.e. 204).")
    assert [(h.method, h.score) for h in hits] == [("ngram", 1.0)]


def test_boilerplate_alone_matches_nothing(matcher):
    for text in (
        "Find the value of $x$.",
        "What is the value of the expression? Express your answer as a common fraction.",
        "The probability is m/n, where m and n are relatively prime positive integers. Find m+n.",
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "Find the remainder when N is divided by 1000.",
    ):
        assert matcher.match(text) == [], text


# ------------------------------------------------------------------------------ the command


def contaminated_input() -> tuple[str, list[dict]]:
    math = bench_rows("math500")
    aime = bench_rows("aime24")
    queries = [
        "Find the value of x if 3x + 5 = 17, and explain each step.",
        "Solve this for me please:\n" + math[10]["problem"] + "\nThanks!",
        aime[3]["problem"].replace("$", ""),
        "Tomasz has 14 pebbles and gives 3 to Ines. How many pebbles does he keep?",
    ]
    return records(*queries), [math[10], aime[3]]


def test_default_drops_contaminated_records_and_summarises():
    data, _ = contaminated_input()
    args = ["decontam", "--against", f"{bench_path('math500')},{bench_path('aime24')}", "--stats", "-"]
    res = run_still(args, stdin=data)
    kept = [json.loads(x) for x in res.lines()[:2]]
    assert [r["id"] for r in kept] == ["r0", "r3"]
    assert res.lines()[:2] == data.encode().splitlines()[0::3]  # untouched records pass byte for byte
    stats = json.loads(b"\n".join(res.lines()[2:]))
    assert stats["dropped"] == {"contaminated": 2} and stats["decontam"]["contaminated"] == 2
    assert "2 contaminated records (math500 1, aime24 1)" in res.stderr
    assert "dropped 2 (contaminated 2)" in res.stderr


def test_mark_keeps_everything_and_annotates():
    data, (math_item, aime_item) = contaminated_input()
    res = run_still(["decontam", "--mark", "--against", f"{bench_path('math500')},{bench_path('aime24')}"], stdin=data)
    out = [json.loads(x) for x in res.lines()]
    assert [r["id"] for r in out] == ["r0", "r1", "r2", "r3"]
    assert out[0]["decontam"] == [] and out[3]["decontam"] == []
    hit = out[1]["decontam"]
    assert len(hit) == 1 and set(hit[0]) == {"benchmark", "item", "method", "score", "span", "field"}
    assert hit[0]["benchmark"] == "math500" and hit[0]["item"] == math_item["unique_id"]
    assert hit[0]["method"] == "ngram" and hit[0]["score"] == 1.0 and hit[0]["field"] == "query"
    start, end = hit[0]["span"]
    assert out[1]["query"][start:end] == math_item["problem"].rstrip(".?")[: end - start]
    assert out[2]["decontam"][0]["item"] == aime_item["id"]


def test_report_lists_counts_and_hit_items(tmp_path):
    data, (math_item, aime_item) = contaminated_input()
    report = tmp_path / "report.json"
    against = f"{bench_path('math500')},{bench_path('aime24')}"
    run_still(["decontam", "--against", against, "--report", str(report), "-q"], stdin=data)
    rep = json.loads(report.read_text())
    assert rep["records"] == {"read": 4, "contaminated": 2}
    by_name = {b["name"]: b for b in rep["benchmarks"]}
    assert by_name["math500"]["items"] == 500 and by_name["math500"]["records_hit"] == 1
    assert by_name["math500"]["hit_items"] == [{"item": math_item["unique_id"], "records": 1}]
    assert by_name["aime24"]["hit_items"] == [{"item": aime_item["id"], "records": 1}]
    assert by_name["aime24"]["sha256"] == hashlib.sha256(Path(bench_path("aime24")).read_bytes()).hexdigest()
    assert rep["parameters"]["methods"] == ["ngram", "containment", "digits"]


def test_fields_response_and_both():
    problem = bench_rows("gsm8k_test")[5]["question"]
    data = json.dumps({"query": "Solve the next one.", "response": "We restate it: " + problem}) + "\n"
    against = bench_path("gsm8k_test")
    assert run_still(["decontam", "--against", against], stdin=data).out == data
    assert run_still(["decontam", "--against", against, "--fields", "response"], stdin=data).out == ""
    res = run_still(["decontam", "--against", against, "--fields", "both", "--mark"], stdin=data)
    assert [h["field"] for h in json.loads(res.out)["decontam"]] == ["response"]


def test_methods_can_be_switched_and_numbers_changed_is_digits():
    problem = bench_rows("math500")[2]["problem"]  # If $f(x) = \frac{3x-2}{x-2}$, what is ...
    changed = problem.replace("3", "4").replace("2", "3").replace("0", "1")
    data = records(changed, problem)
    against = bench_path("math500")
    out = [
        json.loads(x)["decontam"] for x in run_still(["decontam", "--against", against, "--mark"], stdin=data).lines()
    ]
    assert [[h["method"] for h in hits] for hits in out] == [["digits"], ["ngram"]]
    res = run_still(["decontam", "--against", against, "--methods", "ngram,containment"], stdin=data)
    assert res.lines() == data.encode().splitlines()[:1]
    for method in ("ngram", "containment", "digits"):
        res = run_still(["decontam", "--against", against, "--mark", "--methods", method], stdin=data)
        assert [h["method"] for h in json.loads(res.lines()[1])["decontam"]] == [method]


def test_index_build_reuse_round_trip_and_manifest(tmp_path):
    data, _ = contaminated_input()
    idx = tmp_path / "idx"
    paths = f"{bench_path('math500')},{bench_path('aime24')}"
    res = run_still(["decontam", "index", "build", "--against", paths, "-o", str(idx)])
    assert "530 items" in res.stderr and res.out == ""
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["format"] == "still-decontam-index" and manifest["items"] == 530
    assert [b["name"] for b in manifest["benchmarks"]] == ["math500", "aime24"]
    assert manifest["benchmarks"][0]["sha256"] == hashlib.sha256(Path(bench_path("math500")).read_bytes()).hexdigest()
    blob = b"".join(p.read_bytes() for p in idx.iterdir())
    # No word of any problem text is stored in clear (the index holds hashes; item ids and names
    # are metadata, so words that also occur there are left out).
    rows = bench_rows("math500") + bench_rows("aime24")
    meta = {
        w.lower() for r in rows for k, v in r.items() if k != "problem" for w in re.findall(r"[A-Za-z]{6,}", str(v))
    }
    words = {w for r in rows for w in re.findall(r"[A-Za-z]{6,}", r["problem"]) if w.lower() not in meta}
    assert len(words) > 200
    assert [w for w in words if w.encode() in blob] == []
    fresh = run_still(["decontam", "--mark", "--against", paths], stdin=data)
    reused = run_still(["decontam", "--mark", "--index", str(idx)], stdin=data)
    assert reused.stdout == fresh.stdout and b'"item":"test/' in reused.stdout
    shown = json.loads(run_still(["decontam", "index", "show", str(idx)]).out)
    assert shown == manifest
    (idx / "index.npz").write_bytes(b"corrupt")
    bad = run_still(["decontam", "--index", str(idx)], stdin=data, code=2)
    assert "checksum" in bad.stderr
    run_still(["decontam", "index", "build", "-q", "--against", paths, "-o", str(idx)])  # replaces it
    assert run_still(["decontam", "--mark", "--index", str(idx)], stdin=data).stdout == fresh.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_output_is_deterministic():
    data, _ = contaminated_input()
    args = ["decontam", "--mark", "--fields", "both", "--against", f"{bench_path('math500')},{bench_path('aime24')}"]
    assert run_still(args, stdin=data).stdout == run_still(args, stdin=data).stdout


def test_json_list_benchmark_and_named_file(tmp_path):
    rows = bench_rows("amc23")[:5]
    listed = tmp_path / "mine.json"
    listed.write_text(json.dumps([{"prompt": r["problem"]} for r in rows]))
    res = run_still(["decontam", "--mark", "--against", f"amc={listed}"], stdin=records(rows[2]["problem"]))
    assert json.loads(res.out)["decontam"][0] | {"score": 0, "span": 0} == {
        "benchmark": "amc",
        "item": 2,
        "method": "ngram",
        "score": 0,
        "span": 0,
        "field": "query",
    }


def test_bad_inputs_are_reported(tmp_path):
    data = records("hello world")
    math = bench_path("math500")
    assert "--against" in run_still(["decontam"], stdin=data, code=2).stderr
    run_still(["decontam", "--against", math, "--index", str(tmp_path)], stdin=data, code=2)
    assert "no such file" in run_still(["decontam", "--against", "nope.jsonl"], stdin=data, code=2).stderr
    nofield = tmp_path / "b.jsonl"
    nofield.write_text('{"title": "x"}\n')
    res = run_still(["decontam", "--against", str(nofield)], stdin=data, code=3)
    assert "b.jsonl:1: no text field" in res.stderr and "--bench-field" in res.stderr
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"problem": "a b c d e f"}\n{oops\n')
    assert "c.jsonl:2: invalid JSON" in run_still(["decontam", "--against", str(broken)], stdin=data, code=3).stderr
    res = run_still(["decontam", "--against", math], stdin='{"id": 1}\n', code=3)
    assert "<stdin>:1: no query field" in res.stderr
    res = run_still(["decontam", "--against", math, "--on-error", "skip"], stdin='{"id": 1}\n')
    assert "errors 1" in res.stderr
    assert "--methods" in run_still(["decontam", "--against", math, "--methods", "fuzzy"], stdin=data, code=2).stderr
    assert "not a decontam index" in run_still(["decontam", "--index", str(tmp_path)], stdin=data, code=2).stderr
    parquet = tmp_path / "p.parquet"
    parquet.write_bytes(b"PAR1")
    res = run_still(["decontam", "--against", str(parquet)], stdin=data, code=None)
    assert res.code in (1, 3) and ("still[parquet]" in res.stderr or "p.parquet" in res.stderr)


def test_builtin_name_offline_says_how_to_pass_a_file():
    res = run_still(["decontam", "--against", "aime24"], stdin=records("x"), code=1, env={"HF_HUB_OFFLINE": "1"})
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("still: built-in benchmark 'aime24' (HuggingFaceH4/aime_2024)")
    assert "pass a local copy instead: --against path/to/aime24.jsonl" in line


def test_help():
    res = run_still(["decontam", "--help"])
    assert "Usage: still decontam" in res.out and "index" in res.out and "run" in res.out
    run_help = run_still(["decontam", "run", "--help"]).out
    for opt in ("--against", "--index", "--fields", "--mark", "--report", "--methods", "--bench-field"):
        assert opt in run_help
    assert "-o, --output DIR" in run_still(["decontam", "index", "build", "--help"]).out


def test_spans_cover_the_question_with_latex_and_unicode_around(matcher):
    problem = bench_rows("gsm8k_test")[1]["question"]  # "A robe takes 2 bolts of blue fiber ..."
    for before, after in (
        ("Résumé — « café » first. $\\left( x \\right)$ then: ", " ✓ done."),
        ("\\displaystyle Plain ASCII prefix \\left[ ", " \\right] and a tail."),
    ):
        text = before + problem + after
        hits = matcher.match(text)
        assert len(hits) == 1
        start, end = hits[0].span
        assert text[start:end] == problem.rstrip("?")
