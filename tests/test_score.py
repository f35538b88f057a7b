"""``still score``: perplexity against a direct float64 computation, windows, repetition, sample --where."""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import run_still

from still.core.repetition import longest_repeat, repeated_ngram_fraction, repetition, top_ngram_count, words

RECORDS = [
    {"id": "a", "query": "What is 2 + 3?", "response": "<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}."},
    {"id": "b", "query": "Sort the list", "response": "def f(x):\n    return sorted(x)\nprint(f([3, 1]))"},
    {"id": "c", "query": "Find the sum of 12 and 30, please reason step by step", "response": "42"},
    {"id": "d", "query": "x", "response": "the the the the the the the the"},
]


@functools.cache
def _float64_model(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return tok, AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64).eval()


def _direct_logprobs(model_dir: Path, rec: dict[str, str], max_length: int | None = None) -> list[float]:
    """Token log-probs of the response in float64, one unpadded forward pass per target block."""
    import torch

    tok, lm = _float64_model(model_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": rec["query"]}], tokenize=False, add_generation_prompt=True
    )
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = p + tok(rec["response"], add_special_tokens=False)["input_ids"]
    # the documented windows: everything at once when it fits, else blocks of M//2 targets, each
    # seeing the M tokens that end with it
    if max_length is None or len(ids) <= max_length:
        blocks = [(0, len(p), len(ids))]
    else:
        half = max_length // 2
        blocks = [
            (max(0, min(t + half, len(ids)) - max_length), t, min(t + half, len(ids)))
            for t in range(len(p), len(ids), half)
        ]
    out: list[float] = []
    with torch.no_grad():
        for start, first, end in blocks:
            logits = lm(torch.tensor([ids[start:end]])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            out.extend(float(lp[t - start - 1, ids[t]]) for t in range(first, end))
    return out


def _run_score(tiny_model: Path, tmp_path: Path, extra: str = "") -> list[dict]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    res = run_still(f"score -m {tiny_model} --batch-size 3 {extra} {src}")
    return [json.loads(line) for line in res.lines()]


@pytest.mark.parametrize("max_length", [None, 12])
def test_perplexity_equals_direct_float64(tiny_model: Path, tmp_path: Path, max_length: int | None) -> None:
    out = _run_score(tiny_model, tmp_path, f"--max-length {max_length}" if max_length else "")
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS]
    for rec, got in zip(RECORDS, out):
        direct = _direct_logprobs(tiny_model, rec, max_length)
        mean = math.fsum(direct) / len(direct)
        s = got["score"]
        assert s["n_tokens"] == len(direct)
        assert s["logprob_mean"] == pytest.approx(mean, rel=1e-5)
        assert s["ppl"] == pytest.approx(math.exp(-mean), rel=1e-5)
        assert (s["chunks"] > 1) == (max_length is not None and len(direct) > 3)


def test_windows_cover_each_target_once_with_context() -> None:
    from still.core.score import windows

    for length, first, m in [(10, 3, 16), (50, 5, 8), (9, 8, 2), (100, 90, 7), (4, 4, 4)]:
        wins = windows(0, length, first, m)
        targets = [t for w in wins for t in range(w.first, w.end)]
        assert targets == list(range(first, length))
        for w in wins:
            assert w.end - w.start <= m and w.start < w.first
            assert w.first - w.start >= min(w.first, m // 2)


def test_empty_response_and_missing_query(tiny_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"query": "q", "response": ""}\n{"response": "no query"}\n')
    res = run_still(f"score -m {tiny_model} --on-error skip {src}")
    (line,) = res.lines()
    s = orjson.loads(line)["score"]
    assert s["n_tokens"] == 0 and s["ppl"] is None and s["longest_repeat"] == 0
    assert "errors 1" in res.stderr
    run_still(f"score -m {tiny_model} {src}", code=3)


def _naive_longest(tokens: list[str]) -> int:
    best = 0
    for k in range(1, len(tokens)):
        grams = [tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)]
        if len(set(grams)) < len(grams):
            best = k
    return best


def test_repetition_on_constructed_strings() -> None:
    assert words("x=1, y") == ["x", "=", "1", ",", "y"]
    r = repetition("a b c d a b c d", n=4)
    assert r == {
        "n_words": 8,
        "rep_ngram_frac": 0.2,
        "rep_ngram_n": 4,
        "top_ngram_count": 0,
        "top_ngram_n": 20,
        "longest_repeat": 4,
    }
    assert repetition("a b c d a b c d", n=4, top_n=3)["top_ngram_count"] == 2
    assert repetition("go " * 25, top_n=20)["top_ngram_count"] == 6
    assert longest_repeat("a b a b a".split()) == 3  # overlapping occurrences count
    assert repetition("one two three", n=2)["rep_ngram_frac"] == 0.0
    assert repetition("one two three")["longest_repeat"] == 0
    assert repeated_ngram_fraction(["a"] * 10, 3) == pytest.approx(1 - 1 / 8)
    assert repetition("")["n_words"] == 0
    loop = "Let me check again. " * 20
    # 19 of the 20 sentences repeat, and the period before the loop matches the one ending a sentence
    assert repetition("Start. " + loop)["longest_repeat"] == 19 * 5 + 1
    rng = random.Random(3)
    for _ in range(200):
        tokens = [rng.choice("ab" if rng.random() < 0.5 else "abcdef") for _ in range(rng.randint(0, 30))]
        assert longest_repeat(tokens) == _naive_longest(tokens)
        n = rng.randint(1, 4)
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        want = 1 - len(set(grams)) / len(grams) if grams else 0.0
        assert repeated_ngram_fraction(tokens, n) == pytest.approx(want)
        assert top_ngram_count(tokens, n) == max((grams.count(g) for g in grams), default=0)


def test_sample_where_filters_numeric_fields(tmp_path: Path) -> None:
    rows = [{"id": str(i), "score": {"ppl": p}} for i, p in enumerate([5.0, 19.9, 20.0, 50.0])]
    rows.append({"id": "x", "score": {"ppl": None}})
    rows.append({"id": "y"})
    src = tmp_path / "s.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = run_still(f"sample --where 'score.ppl<20' --stats {tmp_path}/st.json {src}")
    assert [orjson.loads(x)["id"] for x in res.lines()] == ["0", "1"]
    dropped = json.loads((tmp_path / "st.json").read_text())["dropped"]
    assert dropped == {"where score.ppl<20": 2, "where: no number at score.ppl": 2}
    res = run_still(["sample", "--where", "score.ppl >= 19.9", "--where", "score.ppl!=50", str(src)])
    assert [orjson.loads(x)["id"] for x in res.lines()] == ["1", "2"]
    bad = run_still(["sample", "--where", "score.ppl ~ 3", str(src)], code=2)
    assert "PATH OP NUMBER" in bad.stderr
    run_still(["sample", "--where", "__import__('os')<1", str(src)], code=2)
