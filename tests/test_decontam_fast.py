"""`still decontam`'s fast paths give exactly what the per-record reference path gives.

The block screen (`Matcher.match_many` / `Matcher.screen`) only decides which texts can skip the
per-record path, and `prepared` finds non-ASCII runs with bytes.find; both are compared here with
their reference on the planted suite and on random text built to hit the edge cases.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import data_file, run_still

from still.core.decontam import (
    RECORD_BLOCK,
    SEED_DICT_AFTER,
    DecontamIndex,
    IndexParams,
    Matcher,
    _KeyTable,
    load_benchmarks,
    prepared,
    prepared_reference,
)
from still.core.decontam_suite import clean_problem, planted_suite

BENCH_FILES = ("aime24", "amc23", "math500", "gsm8k_test")


@pytest.fixture(scope="module")
def benchmarks():
    return load_benchmarks([str(data_file(f"benchmarks/{n}.jsonl")) for n in BENCH_FILES], None)


@pytest.fixture(scope="module")
def index(benchmarks):
    return DecontamIndex.build(benchmarks)


def reference_hits(matcher: Matcher, texts: list[str]) -> list[list[tuple]]:
    return [[tuple(vars(h).values()) for h in matcher._match_uncached(t)] for t in texts]


def block_hits(matcher: Matcher, texts: list[str]) -> list[list[tuple]]:
    return [[tuple(vars(h).values()) for h in hits] for hits in matcher.match_many([(t, "query") for t in texts])]


def random_texts(benchmarks, rng: random.Random, n: int) -> list[str]:
    """Random mixtures: benchmark words and fragments, LaTeX, zero-padded numbers, non-ASCII,
    long tokens, empty and tiny texts."""
    items = [text for b in benchmarks for _, text in b.items]
    words = [w for text in rng.sample(items, 300) for w in text.split()]
    extras = [
        "\\left(",
        "\\dfrac",
        "\\displaystyle",
        "007",
        "0",
        "×",
        "π",
        "é",
        "½",
        "Ⅸ",
        "ſ",
        "\u212a",
        "中文",
        "\ud800",
        "ﬁ",
        "−",
        "a" * 40,
        "x" * 9,
        "12345678901234567",
        "$",
        "\\(",
        "{",
        "}",
        "\t",
        "\n",
        "",
    ]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1:
            out.append(" ".join(rng.choice(extras + words) for _ in range(rng.randint(0, 6))))
            continue
        parts = [rng.choice(words + extras) for _ in range(rng.randint(5, 200))]
        if kind < 0.4:  # a benchmark item, or a window of one, inside the noise
            item = rng.choice(items).split()
            a = rng.randrange(len(item))
            parts.insert(rng.randrange(len(parts) + 1), " ".join(item[a : a + rng.randint(3, 40)]))
        out.append(" ".join(parts))
    # short items (matched whole, or through their rarest token): alone and inside other text
    short = [text for text in items if len(text.split()) <= 12]
    out += short + [f"{rng.choice(words)} {text} {rng.choice(words)}" for text in short]
    return out


def test_block_screen_gives_the_reference_hits_on_the_planted_suite(benchmarks, index):
    items = [(b.name, i, text) for b in benchmarks for i, (_, text) in enumerate(b.items)]
    texts = [p.text for p in planted_suite(items, seed=5, clean=1000)]
    texts += ["\n\n".join(clean_problem(random.Random(k)) for _ in range(6)) for k in range(500)]
    reference = reference_hits(Matcher(index, IndexParams()), texts)
    fast = Matcher(index, IndexParams())
    assert block_hits(fast, texts) == reference
    # the screen is what makes it fast: clean text must mostly leave after it
    clean = [t for t, hits in zip(texts, reference, strict=True) if not hits]
    assert sum(fast.screen(clean)) <= 0.05 * len(clean)


def test_block_screen_gives_the_reference_hits_on_random_text(benchmarks, index):
    texts = random_texts(benchmarks, random.Random(3), 3000)
    reference = reference_hits(Matcher(index, IndexParams()), texts)
    assert sum(map(bool, reference)) > 300  # the random text does contain items
    fast = Matcher(index, IndexParams())
    assert fast.whole and fast.anchor_items  # both special paths are exercised
    assert block_hits(Matcher(index, IndexParams()), texts) == reference
    # the screen passes the seed candidates it found only when rows are single 5-grams
    unverified = Matcher(index, IndexParams())
    unverified.screen(["x"])
    unverified._rows_exact = False
    assert block_hits(unverified, texts) == reference
    # the per-record path's three ways to find seed candidates give the same hits: numpy by key
    # (its first records), numpy by searchsorted (when two 5-grams share a key), the Python dict
    by_key = Matcher(index, IndexParams())
    by_key._numpy_probes = -len(texts)
    assert reference_hits(by_key, texts) == reference and by_key._seed_dict is None
    by_rows = Matcher(index, IndexParams())
    by_rows.screen(["x"])
    by_rows._rows_exact = False
    by_rows._numpy_probes = -len(texts)
    assert reference_hits(by_rows, texts) == reference and by_rows._seed_dict is None
    by_dict = Matcher(index, IndexParams())
    by_dict._numpy_probes = SEED_DICT_AFTER
    assert reference_hits(by_dict, texts) == reference and by_dict._seed_dict is not None
    params = IndexParams(methods=("ngram",), max_df=3, ngram_min=5, ngram_max=9)
    assert block_hits(Matcher(index, params), texts) == reference_hits(Matcher(index, params), texts)


def test_prepared_equals_the_character_wise_reference():
    rng = random.Random(9)
    alphabet = "aZ09 \\$é×π½Ⅸ−ſ\u212a\u0301中文\ud800ℌ\n{}ﬁ·°"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(5000)]
    texts += ["\\Left( x \\RIGHT) \\textbf{é}", "plain ascii", "", "é", "\ud800"]
    for text in texts:
        assert prepared(text) == prepared_reference(text), repr(text)


def test_key_table_grows_and_finds_exactly_its_keys():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, size=30000, dtype=np.int64).astype(np.uint64) * np.uint64(3))
    table = _KeyTable(16)
    for chunk in np.array_split(keys[:20000], 7):  # several growths
        table.insert(chunk, (chunk % np.uint64(1000)).astype(np.int64))
    values, found = table.lookup(keys)
    assert found[:20000].all() and not found[20000:].any()
    assert (values[:20000] == (keys[:20000] % np.uint64(1000)).astype(np.int64)).all()
    assert (values[20000:] == 0).all()


def test_cli_output_is_the_same_in_blocks_as_one_at_a_time(tmp_path, benchmarks):
    """More records than one block, with contaminated ones across block borders and a record
    without the field: --mark output and the report are those of one-at-a-time matching."""
    import json

    rng = random.Random(1)
    items = [text for b in benchmarks for _, text in b.items]
    rows = []
    for k in range(2 * RECORD_BLOCK + 37):
        q = clean_problem(rng) if k % 97 else rng.choice(items)
        rows.append({"id": k, "query": q} if k != 700 else {"id": k})
    data = "".join(json.dumps(r) + "\n" for r in rows)
    math = str(data_file("benchmarks/math500.jsonl"))
    gsm = str(data_file("benchmarks/gsm8k_test.jsonl"))
    res = run_still(["decontam", "--against", f"{math},{gsm}", "--mark", "--on-error", "skip"], stdin=data)
    out = [json.loads(line) for line in res.lines()]
    assert len(out) == len(rows) - 1 and "errors 1" in res.stderr
    matcher = Matcher(DecontamIndex.build(load_benchmarks([math, gsm], None)), IndexParams())
    expected = [[h.as_dict(matcher.index) for h in matcher.match(r["query"])] for r in rows if "query" in r]
    assert [r["decontam"] for r in out] == expected
    assert sum(map(bool, expected)) >= 10


def test_vectorised_compile_equals_the_per_item_definition(index):
    """The seed table, needs and digit tables, computed for all items at once, are what the
    per-item definition (plain Python, as the module's docstring describes it) gives."""
    from collections import Counter

    from still.core.decontam import (
        DIGITS_MIN_TOKENS,
        DIGITS_MIN_WORDS,
        NUM,
        SEED_N,
        UNK,
        collapse_numbers,
        gram_hashes,
        ngram_size,
    )

    for params in (IndexParams(), IndexParams(max_df=2, ngram_min=4, ngram_max=7)):
        matcher = Matcher(index, params)
        mask_of = index.mask_of
        item_grams = []
        df: Counter = Counter()
        for i in range(index.n_items):
            m = mask_of[index.item_slice(i)].tolist()
            grams = list(zip(*(m[k:] for k in range(SEED_N))))
            item_grams.append(grams)
            df.update(set(grams))
        boiler = set()
        for ids in matcher._boilerplate_ids():
            m = [NUM, NUM] + [int(mask_of[i]) if i != UNK else UNK for i in ids] + [NUM, NUM]
            boiler.update(zip(*(m[k:] for k in range(SEED_N))))
        table: dict = {}
        need = [0] * index.n_items
        for i, grams in enumerate(item_grams):
            seeds = [g for g in grams if df[g] <= params.max_df and g not in boiler]
            if len(set(seeds)) < 2:
                continue
            for g in sorted(set(seeds)):
                table.setdefault(g, []).append(i)
            need[i] = min(len(set(seeds)), min(6, max(3, -(-3 * len(seeds) // 10))))
        assert matcher.seed_table == table and matcher.seed_need == need
        assert matcher.seed_keys == frozenset(table)
        th = index.vocab_hashes
        for i in range(0, index.n_items, 7):
            toks = index.item_slice(i)
            assert matcher.ngram_n[i] == ngram_size(toks.size, params.ngram_min, params.ngram_max)
            collapsed = collapse_numbers(mask_of[toks])[0]
            grams, _ = matcher.tables["digits"].item(i)
            long_enough = collapsed.size >= DIGITS_MIN_TOKENS and int((collapsed != NUM).sum()) >= DIGITS_MIN_WORDS
            assert matcher.tables["digits"].n[i] == (SEED_N if long_enough else 0)
            if matcher.tables["digits"].n[i]:
                assert grams.tolist() == sorted(set(gram_hashes(th[collapsed], SEED_N).tolist()))
            else:
                assert grams.size == 0


def test_key_table_keeps_the_key_zero_apart_from_its_empty_slots():
    table = _KeyTable(16)
    keys = np.array([0, 5, 1 << 63, (1 << 63) + 1], dtype=np.uint64)  # the last two share a slot
    table.insert(keys[1:], np.array([7, 8, 9], dtype=np.int64))
    values, found = table.lookup(np.array([0, 5, 1 << 63, (1 << 63) + 1, 6], dtype=np.uint64))
    assert found.tolist() == [False, True, True, True, False] and values.tolist() == [0, 7, 8, 9, 0]
    table.insert(keys[:1], np.array([4], dtype=np.int64))
    values, found = table.lookup(keys)
    assert found.all() and values.tolist() == [4, 7, 8, 9]
