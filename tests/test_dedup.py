"""still dedup: correctness against exact Jaccard, properties, state, datasketch parity."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_still
from hypothesis import given, settings
from hypothesis import strategies as st

from still.core import minhash as mh
from still.core.dedup import DedupConfig, dedup, jaccard
from still.core.jsonl import Record
from still.core.stats import RunStats

sys.path.insert(0, str(ROOT / "bench"))
import corpus  # noqa: E402

THRESHOLD = 0.8


def _records(texts: list[str]) -> list[Record]:
    out = []
    for i, t in enumerate(texts):
        raw = json.dumps({"id": f"r{i}", "query": t}).encode() + b"\n"
        out.append(Record(json.loads(raw), raw, "<test>", i + 1))
    return out


def _run(texts: list[str], **kw) -> list[dict]:
    stats = RunStats("dedup")
    stats.read = len(texts)
    kept = [dict(r.data) for r in dedup(_records(texts), DedupConfig(**kw), stats)]
    stats.written = len(kept)
    stats.check_balance()
    return kept


def _shingle_set(text: str, ngram: int = 5) -> set[tuple[bytes, ...]]:
    toks = mh.tokens(mh.Normaliser()(text))
    n = mh.shingle_size(len(toks), ngram)
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def _exact_jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# --- correctness against ground truth ---------------------------------------------------------


def test_recall_and_precision_against_exact_jaccard(tmp_path: Path) -> None:
    docs = list(corpus.documents(4000, words=80, dup_rate=0.2, seed=3))
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    res = run_still(["dedup", "--mark", str(path)])
    marked = [json.loads(x) for x in res.lines()]
    assert len(marked) == len(docs)
    sets = [_shingle_set(d["query"]) for d in docs]

    # ground truth: every pair sharing a shingle, with its exact Jaccard similarity
    postings: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            postings[sh].append(i)
    pairs = set()
    for ids in postings.values():
        if 1 < len(ids) < 200:
            for a in range(len(ids)):
                for b in range(a + 1, len(ids)):
                    pairs.add((ids[a], ids[b]))
    high = [(a, b) for a, b in pairs if _exact_jaccard(sets[a], sets[b]) >= THRESHOLD + 0.05]
    assert len(high) >= 150, "the corpus must plant enough near duplicates"
    cluster = [m["dedup"]["cluster"] for m in marked]
    rep_of = {m["dedup"]["cluster"]: i for i, m in enumerate(marked) if m["dedup"]["representative"]}

    def found(a: int, b: int) -> bool:
        """Together, or the later one removed as a duplicate of a record truly similar to it."""
        if cluster[a] == cluster[b]:
            return True
        rep = rep_of.get(cluster[b])
        return (
            not marked[b]["dedup"]["representative"]
            and rep is not None
            and rep != b
            and (_exact_jaccard(sets[b], sets[rep]) >= THRESHOLD)
        )

    hits = sum(1 for a, b in high if found(a, b))
    assert hits / len(high) >= 0.99, f"recall {hits / len(high):.4f} on {len(high)} pairs"

    # precision: every duplicate is similar enough to its own representative
    dups = [i for i, m in enumerate(marked) if not m["dedup"]["representative"]]
    assert dups
    for i in dups:
        r = rep_of[cluster[i]]
        j = _exact_jaccard(sets[i], sets[r])
        assert j >= THRESHOLD - 1e-9, f"record {i} joined {r} at exact Jaccard {j:.3f}"
        assert abs(j - marked[i]["dedup"]["jaccard"]) < 1e-3


def test_no_transitive_chains() -> None:
    # a chain of texts each 0.85-similar to the next, but the ends far apart
    rng = random.Random(1)
    words = [f"w{i}" for i in range(400)]
    base = [rng.choice(words) for _ in range(60)]
    chain = [list(base)]
    for _ in range(8):
        nxt = list(chain[-1])
        for _ in range(2):
            nxt[rng.randrange(len(nxt))] = f"new{rng.randrange(10**6)}"
        chain.append(nxt)
    texts = [" ".join(t) for t in chain]
    kept = _run(texts, mark=True)
    sets = [_shingle_set(t) for t in texts]
    reps = {k["dedup"]["cluster"]: i for i, k in enumerate(kept) if k["dedup"]["representative"]}
    for i, k in enumerate(kept):
        r = reps[k["dedup"]["cluster"]]
        assert _exact_jaccard(sets[i], sets[r]) >= THRESHOLD
    assert _exact_jaccard(sets[0], sets[-1]) < THRESHOLD
    assert len(reps) > 1


def test_digits_are_kept_by_default() -> None:
    texts = ["What is the remainder when 4848 is divided by 7 ?", "What is the remainder when 4849 is divided by 7 ?"]
    assert len(_run(texts)) == 2
    assert len(_run(texts, normalise=("nfkc", "lower", "space", "digits"))) == 1


def test_normalisation_is_explicit() -> None:
    texts = ["Hello,   World  again and again", "hello, world again and again", "Hello World again and again!"]
    assert len(_run(texts, near=False)) == 2
    assert len(_run(texts, near=False, normalise=("nfkc", "lower", "space", "punct"))) == 1
    assert len(_run(texts, near=False, normalise=())) == 3


# --- properties -----------------------------------------------------------------------------

WORDS = st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"])
TEXTS = st.lists(st.lists(WORDS, min_size=0, max_size=14).map(" ".join), min_size=0, max_size=25)


@settings(max_examples=60, deadline=None)
@given(TEXTS)
def test_output_is_a_subset_and_idempotent(texts: list[str]) -> None:
    kept = _run(texts)
    ids = [k["id"] for k in kept]
    assert set(ids) <= {f"r{i}" for i in range(len(texts))}
    assert ids == sorted(ids, key=lambda s: int(s[1:]))  # input order
    again = _run([k["query"] for k in kept])
    assert [k["query"] for k in again] == [k["query"] for k in kept]


@settings(max_examples=40, deadline=None)
@given(TEXTS, st.randoms(use_true_random=False))
def test_keep_longest_is_order_independent(texts: list[str], rnd: random.Random) -> None:
    shuffled = list(texts)
    rnd.shuffle(shuffled)
    a = sorted(k["query"] for k in _run(texts, keep="longest"))
    b = sorted(k["query"] for k in _run(shuffled, keep="longest"))
    assert a == b


def test_block_size_does_not_change_output(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    corpus.write(str(path), 600, words=40, dup_rate=0.3, seed=5)
    outs = {bs: run_still(["dedup", "--mark", "--block-size", str(bs), str(path)]).stdout for bs in (1, 7, 2048)}
    assert outs[1] == outs[7] == outs[2048]
    assert run_still(["dedup", "--mark", str(path)]).stdout == outs[2048]


def test_keep_policies_and_max_per_key() -> None:
    texts = ["same question about primes", "same question about primes!!", "same question about primes"]
    rows = [
        {"query": "q one about graphs and trees", "response": "short", "score": 1},
        {"query": "q one about graphs and trees", "response": "a much longer answer", "score": 3},
        {"query": "q one about graphs and trees", "response": "medium answer", "score": 2},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    first = [json.loads(x)["score"] for x in run_still("dedup", stdin=data).lines()]
    best = [json.loads(x)["score"] for x in run_still("dedup --keep max:score", stdin=data).lines()]
    two = [json.loads(x)["score"] for x in run_still("dedup --keep max:score --max-per-key 2", stdin=data).lines()]
    assert first == [1] and best == [3] and two == [3, 2]
    assert len(_run(texts, near=False)) == 2
    res = run_still("dedup --keep max:missing", stdin=data, code=3)
    assert "<stdin>:1: --keep max:missing: field missing is missing or not a number" in res.stderr


def test_key_response_and_messages() -> None:
    rows = [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "the answer is 4"}]},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "The answer is 4"}]},
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "the answer is 5"}]},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows)
    assert len(run_still("dedup --key response", stdin=data).lines()) == 2
    assert len(run_still("dedup --key query", stdin=data).lines()) == 2
    assert len(run_still("dedup --key query+response", stdin=data).lines()) == 3


def test_clusters_file_and_mark_shape(tmp_path: Path) -> None:
    texts = ["the quick brown fox jumps over the lazy dog today", "the quick brown fox jumps over the lazy dog today"]
    data = "".join(json.dumps({"id": f"x{i}", "query": t}) + "\n" for i, t in enumerate(texts))
    clusters = tmp_path / "clusters.jsonl"
    res = run_still(["dedup", "--mark", "--clusters", str(clusters)], stdin=data)
    marks = [json.loads(x)["dedup"] for x in res.lines()]
    assert set(marks[0]) == {"cluster", "representative", "jaccard", "rank", "match"}
    assert marks[0]["representative"] and not marks[1]["representative"]
    assert marks[1]["match"] == "exact" and marks[0]["cluster"] == marks[1]["cluster"]
    (line,) = clusters.read_text().splitlines()
    c = json.loads(line)
    assert c["size"] == 2 and c["representative"]["id"] == "x0" and c["members"][0]["id"] == "x1"


def test_deterministic_output(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    corpus.write(str(path), 500, words=50, dup_rate=0.2, seed=9)
    a = run_still(["dedup", "--mark", str(path)]).stdout
    b = run_still(["dedup", "--mark", str(path)]).stdout
    assert a == b


def test_explain_prints_curve() -> None:
    res = run_still("dedup --explain --threshold 0.8")
    assert "bands" in res.stderr and "J=0.80" in res.stderr and "P(candidate | J)" in res.stderr
    b, r = mh.choose_bands(0.8, 128)
    assert mh.candidate_probability(0.8, b, r) >= 0.99
    assert mh.candidate_probability(0.3, b, r) < 0.05


# --- datasketch parity ----------------------------------------------------------------------


def test_signatures_equal_datasketch() -> None:
    from datasketch import MinHash

    rng = random.Random(0)
    texts = [
        " ".join(rng.choice(["a", "bb", "ccc", "d+1", "é", "x=2"]) for _ in range(rng.randint(0, 40)))
        for _ in range(50)
    ]
    for num_perm, seed in ((128, 1), (64, 42)):
        shingler = mh.BlockShingler(5)
        sets = shingler.shingles(texts)
        sigs = mh.signatures(sets, num_perm, seed, chunk=97)
        for text, sig, hashes in zip(texts, sigs, sets):
            toks = mh.tokens(text)
            n = mh.shingle_size(len(toks), 5)
            shingles = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
            assert [mh.shingle_hash64(s) for s in shingles] == hashes.tolist()
            m = MinHash(num_perm=num_perm, seed=seed, scheme="affine32", hashfunc=mh.shingle_hash32)
            m.update_batch(shingles)
            assert np.array_equal(m.hashvalues, sig)
        a, b = mh.permutations(num_perm, seed)
        ref = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        assert np.array_equal(ref[0], a) and np.array_equal(ref[1], b)


def test_band_candidates_equal_datasketch_lsh() -> None:
    from datasketch import MinHash, MinHashLSH

    from still.core.lshindex import KeyIndex

    texts = [d["query"] for d in corpus.documents(400, words=30, dup_rate=0.4, seed=2)]
    sets = mh.BlockShingler(5).shingles(texts)
    sigs = mh.signatures(sets, 128, 1)
    bands, rows = mh.choose_bands(0.8, 128)
    keys = mh.band_keys(sigs, bands, rows)
    index = KeyIndex(bands, np.uint32)
    index.add(keys[:200], np.arange(200))
    lsh = MinHashLSH(num_perm=128, params=(bands, rows))
    for i in range(200):
        lsh.insert(i, MinHash(num_perm=128, seed=1, hashvalues=sigs[i], scheme="affine32"))
    ours = index.lookup(keys[200:])
    for q in range(200, 400):
        got = sorted(ours.get(q - 200, ()))
        theirs = sorted(lsh.query(MinHash(num_perm=128, seed=1, hashvalues=sigs[q], scheme="affine32")))
        assert got == theirs


def test_jaccard_helper() -> None:
    a = np.array([1, 2, 3, 3], dtype=np.uint64)
    b = np.array([2, 3, 4], dtype=np.uint64)
    assert jaccard(a, b) == 0.5
    rng = np.random.default_rng(3)
    for _ in range(300):  # sets with repeats, overlaps, empty sides: the ratio of Python sets, to the bit
        x = rng.integers(0, int(rng.integers(1, 40)), int(rng.integers(0, 30)), dtype=np.uint64)
        y = rng.integers(0, int(rng.integers(1, 40)), int(rng.integers(0, 30)), dtype=np.uint64)
        sx, sy = set(x.tolist()), set(y.tolist())
        expected = len(sx & sy) / len(sx | sy) if sx and sy else float(len(sx) == len(sy))
        assert jaccard(x, y) == expected


# --- incremental state ----------------------------------------------------------------------


def test_state_two_runs_equal_one_run(tmp_path: Path) -> None:
    docs = [json.dumps(d) + "\n" for d in corpus.documents(900, words=40, dup_rate=0.3, seed=11)]
    a, b = "".join(docs[:500]), "".join(docs[500:])
    state = tmp_path / "state"
    out_a = run_still(["dedup", "--mark", "--state", str(state)], stdin=a).stdout
    manifest = json.loads((state / "manifest.json").read_text())
    assert manifest["params"]["scheme"] == "affine32" and manifest["generation"] == 1
    out_b = run_still(["dedup", "--mark", "--state", str(state)], stdin=b).stdout
    whole = run_still(["dedup", "--mark"], stdin=a + b).stdout
    assert out_a + out_b == whole
    assert json.loads((state / "manifest.json").read_text())["generation"] == 2
    assert sorted(p.name for p in state.iterdir()) == ["index-2.npz", "lock", "manifest.json", "shingles.bin"]


def _state_arrays(state: Path) -> dict:
    manifest = json.loads((state / "manifest.json").read_text())
    with np.load(state / manifest["arrays"]) as data:
        arrays = {k: data[k].tolist() for k in data.files}
    shingles = (state / "shingles.bin").read_bytes()[: 8 * arrays["offsets"][-1]]
    return {"arrays": arrays, "shingles": shingles, "representatives": manifest["representatives"]}


def test_state_is_committed_only_after_the_output_is_in_place(tmp_path: Path) -> None:
    """`-o /dev/full` fails (ENOSPC) after every record was decided: the state must not say
    they were seen, or the rerun would drop them as duplicates and they would be lost."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    state = tmp_path / "state"
    first = '{"query": "alpha beta gamma delta epsilon"}\n'
    run_still(["dedup", "--state", str(state)], stdin=first)
    before = _state_arrays(state)
    docs = "".join(json.dumps({"query": f"record number {i} with its own words {i * 7}"}) + "\n" for i in range(50))
    res = run_still(["dedup", "--state", str(state), "-o", "/dev/full"], stdin=docs, code=1)
    assert "No space left" in res.stderr or "ENOSPC" in res.stderr or "/dev/full" in res.stderr, res.stderr
    assert _state_arrays(state) == before
    rerun = run_still(["dedup", "--state", str(state)], stdin=docs)
    assert len(rerun.lines()) == 50  # every record kept: nothing was lost


def test_concurrent_runs_on_one_state_equal_the_runs_in_sequence(tmp_path: Path) -> None:
    docs = [json.dumps(d) + "\n" for d in corpus.documents(1200, words=40, dup_rate=0.3, seed=5)]
    a, b = "".join(docs[:600]), "".join(docs[600:])
    inputs = {"a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}
    inputs["a"].write_text(a)
    inputs["b"].write_text(b)
    shared = tmp_path / "shared"
    cmd = [sys.executable, "-m", "still", "dedup", "--mark", "--wait", "--state", str(shared)]
    # outputs to files: the run waiting for the lock must not hold up the other on a full pipe
    procs = [
        subprocess.Popen([*cmd, "-o", str(p) + ".out", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for p in inputs.values()
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    sequences = []
    for order in (("a", "b"), ("b", "a")):
        state = tmp_path / f"seq-{''.join(order)}"
        for name in order:
            run_still(["dedup", "--mark", "--state", str(state), str(inputs[name])])
        sequences.append(_state_arrays(state))
    assert _state_arrays(shared) in sequences
    assert json.loads((shared / "manifest.json").read_text())["generation"] == 2


def test_a_second_run_on_a_held_state_exits_1_or_waits(tmp_path: Path) -> None:
    import fcntl

    state = tmp_path / "state"
    state.mkdir()
    fd = os.open(state / "lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        res = run_still(["dedup", "--state", str(state)], stdin='{"query": "x y z"}\n', code=1)
        assert "another still dedup run is using this --state directory" in res.stderr and "--wait" in res.stderr
        (tmp_path / "in.jsonl").write_text('{"query": "x y z"}\n')
        waiting = subprocess.Popen(
            [sys.executable, "-m", "still", "dedup", "--wait", "--state", str(state), str(tmp_path / "in.jsonl")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.5)
        assert waiting.poll() is None  # still waiting for the lock
    finally:
        os.close(fd)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert out.count(b"\n") == 1


def test_state_refuses_other_parameters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_still(["dedup", "--state", str(state)], stdin='{"query": "a b c d e f g"}\n')
    res = run_still(["dedup", "--state", str(state), "--threshold", "0.7"], stdin='{"query": "x"}\n', code=1)
    assert "other parameters" in res.stderr and "threshold 0.8 (stored) != 0.7 (this run)" in res.stderr
    res = run_still(["dedup", "--state", str(state), "--normalize", "nfkc"], stdin='{"query": "x"}\n', code=1)
    assert "normalise" in res.stderr


def test_state_untouched_when_run_fails(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_still(["dedup", "--state", str(state)], stdin='{"query": "one two three four five six"}\n')
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    bad = '{"query": "seven eight nine ten eleven"}\n{oops}\n'
    run_still(["dedup", "--state", str(state)], stdin=bad, code=3)
    after_manifest = (state / "manifest.json").read_bytes()
    assert after_manifest == before["manifest.json"]
    # the record of the failed run is not remembered: it is new again
    res = run_still(["dedup", "--state", str(state)], stdin='{"query": "seven eight nine ten eleven"}\n')
    assert len(res.lines()) == 1


# --- Redis (retired) ---------------------------------------------------------------------------


def test_redis_is_retired_with_a_clear_pointer() -> None:
    res = run_still("dedup --redis redis://127.0.0.1:1/0", stdin='{"query": "a"}\n', code=2)
    assert "--redis is retired" in res.stderr and "--state" in res.stderr and "dedup plan" in res.stderr
    assert "Traceback" not in res.stderr


def test_block_hashes_equal_reference_definitions() -> None:
    rng = random.Random(4)
    alphabet = ["a", "bb", "x+1", "é", "\u4e2d\u6587", "=", "longer-token"]
    texts = ["", " ", "\t lead", "trail \n"] + [
        " ".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(40)
    ]
    shingler = mh.BlockShingler(5)
    for chunk in (1, 16, 1 << 18):
        hashes, counts = shingler.token_hashes(texts, chunk_bytes=chunk)
        assert hashes.tolist() == [mh.token_hash(t) for x in texts for t in mh.tokens(x)]
        assert counts.tolist() == [len(mh.tokens(x)) for x in texts]
        keys = shingler.sequence_keys(hashes, counts)
        assert keys.tolist() == [mh.sequence_key(mh.tokens(x)) for x in texts]
    # the exact key ignores whitespace runs exactly when whitespace is collapsed
    assert _run(["a  b c", "a b\tc"], near=False) == _run(["a  b c"], near=False)
    assert len(_run(["a  b c", "a b\tc"], near=False, normalise=("lower",))) == 2


def test_exact_copies_of_a_near_duplicate_join_its_cluster() -> None:
    # found by the idempotence property: the copy used to become a representative of its own
    texts = ["alpha", "alpha alpha", "alpha alpha"]
    for block_size in (1, 2, 2048):
        kept = _run(texts, mark=True, block_size=block_size)
        marks = [k["dedup"] for k in kept]
        assert [m["representative"] for m in marks] == [True, False, False]
        assert marks[1]["cluster"] == marks[2]["cluster"] == marks[0]["cluster"]
        assert [m["rank"] for m in marks] == [0, 1, 2]
    assert [k["query"] for k in _run(texts)] == ["alpha"]
