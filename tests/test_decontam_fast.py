"""`still decontam`'s fast paths give exactly what the per-record reference path gives.

The block screen (`Matcher.match_many` / `Matcher.screen`) decides which texts can skip the
per-record path and finds their seed candidates with numpy, and `prepared` finds non-ASCII runs
with bytes.find; both are compared here with a plain-Python reference (below) on the planted
suite and on random text built to hit the edge cases.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import ROOT, data_file, run_still

from still.core.decontam import RECORD_BLOCK, DecontamIndex, IndexParams, Matcher, load_benchmarks, prepared
from still.core.decontam import screen as screen_module
from still.core.decontam.keytable import GRAM_MUL, KeyTable
from still.core.decontam.normalise import _BYTE_TABLE, _NON_ASCII, _drop_formatting, _fix_run
from still.core.decontam.tables import CompiledIndex, boilerplate_ids, row_ids

sys.path.insert(0, str(ROOT / "bench"))
from decontam_suite import clean_problem, planted_suite  # noqa: E402

BENCH_FILES = ("aime24", "amc23", "math500", "gsm8k_test")


@pytest.fixture(scope="module")
def benchmarks():
    return load_benchmarks([str(data_file(f"benchmarks/{n}.jsonl")) for n in BENCH_FILES], None)


@pytest.fixture(scope="module")
def index(benchmarks):
    return DecontamIndex.build(benchmarks)


def prepared_reference(text: str) -> bytes:
    """`prepared` character by character (the definition the fast version must match)."""
    text = _drop_formatting(text)
    if not text.isascii():
        text = _NON_ASCII.sub(_fix_run, text)
    return text.encode("utf-8").translate(_BYTE_TABLE)


def seed_table(compiled: CompiledIndex) -> dict[tuple[int, ...], list[int]]:
    """Masked 5-gram -> the items it seeds, as a Python dict."""
    order = np.argsort(compiled.seed_gram, kind="stable")  # items stay in increasing order
    grams = compiled.seed_gram[order]
    items = compiled.seed_item[order].tolist()
    distinct, first = np.unique(grams, return_index=True)
    bounds = [*first.tolist(), len(items)]
    keys = map(tuple, row_ids(compiled.seed_rows[distinct]).tolist())
    return dict(zip(keys, (items[a:b] for a, b in itertools.pairwise(bounds)), strict=True))


def reference_hits(matcher: Matcher, texts: list[str]) -> list[list[tuple]]:
    """The per-record path on every text, its seed candidates found one record at a time from a
    dict of all seeds: items sharing at least their need of distinct seeds."""
    table = seed_table(matcher.compiled)
    need = matcher.compiled.seed_need.tolist()
    out = []
    for text in texts:
        masked = matcher.tokens.masked_ids(prepared(text).split())
        shared = set(zip(*(masked[k:] for k in range(5)), strict=False)) & table.keys()
        counts = Counter(itertools.chain.from_iterable(map(table.__getitem__, shared)))
        seeds = sorted(i for i, c in counts.items() if c >= need[i])
        out.append([tuple(vars(h).values()) for h in matcher._match_uncached(text, "query", seeds)])
    return out


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
    assert fast.compiled.whole and fast.compiled.anchor_items  # both special paths are exercised
    assert block_hits(fast, texts) == reference
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
    table = KeyTable(16)
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
    from still.core.decontam.tables import (
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
        for ids in boilerplate_ids(index):
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
        assert seed_table(matcher.compiled) == table and matcher.compiled.seed_need.tolist() == need
        th = index.vocab_hashes
        for i in range(0, index.n_items, 7):
            toks = index.item_slice(i)
            assert matcher.compiled.ngram_n[i] == ngram_size(toks.size, params.ngram_min, params.ngram_max)
            collapsed = collapse_numbers(mask_of[toks])[0]
            grams, _ = matcher.compiled.grams["digits"].item(i)
            long_enough = collapsed.size >= DIGITS_MIN_TOKENS and int((collapsed != NUM).sum()) >= DIGITS_MIN_WORDS
            assert matcher.compiled.grams["digits"].n[i] == (SEED_N if long_enough else 0)
            if matcher.compiled.grams["digits"].n[i]:
                assert grams.tolist() == sorted(set(gram_hashes(th[collapsed], SEED_N).tolist()))
            else:
                assert grams.size == 0


def test_key_table_keeps_the_key_zero_apart_from_its_empty_slots():
    table = KeyTable(16)
    keys = np.array([0, 5, 1 << 63, (1 << 63) + 1], dtype=np.uint64)  # the last two share a slot
    table.insert(keys[1:], np.array([7, 8, 9], dtype=np.int64))
    values, found = table.lookup(np.array([0, 5, 1 << 63, (1 << 63) + 1, 6], dtype=np.uint64))
    assert found.tolist() == [False, True, True, True, False] and values.tolist() == [0, 7, 8, 9, 0]
    table.insert(keys[:1], np.array([4], dtype=np.int64))
    values, found = table.lookup(keys)
    assert found.all() and values.tolist() == [4, 7, 8, 9]


def test_seed_keys_that_collide_move_to_another_multiplier(benchmarks, index, monkeypatch):
    """The screen keys seed 5-grams by 64-bit hashes and compares ids only for the row a key
    names, so no two seeds may share a key: a key function that collides (multiplier 1: the sum
    of the ids) is passed over for the next, and the hits stay the reference's."""
    monkeypatch.setattr(screen_module, "KEY_MULTIPLIERS", (np.uint64(1), GRAM_MUL))
    texts = random_texts(benchmarks, random.Random(4), 500)
    matcher = Matcher(index, IndexParams())
    assert matcher.prepare_screen().multiplier == GRAM_MUL
    assert block_hits(matcher, texts) == reference_hits(Matcher(index, IndexParams()), texts)
    with pytest.raises(RuntimeError):
        screen_module.collision_free_keys(np.ones((2, 5), dtype=np.uint64), (np.uint64(1),))
