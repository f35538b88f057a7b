"""Repetition measures of a text: the share of repeated word n-grams and the longest repeated span.

Degenerate reasoning traces loop: the same sentence or paragraph comes back again and again. Two
numbers catch it without a model, on words (runs of letters/digits, or single punctuation marks,
so ``x=1`` is three words):

* ``rep_ngram_frac``: of the text's word n-grams, the share that repeat an n-gram seen earlier
  (``1 - distinct / total``); 0 for no repetition, approaching 1 for a loop.
* ``top_ngram_count``: how often the most frequent word ``top_n``-gram occurs ("Not All Correct
  Answers Are Equal" drops a response whose 20-gram appears more than 20 times).
* ``longest_repeat``: the length in words of the longest span that occurs at least twice (the two
  occurrences may overlap, as in ``a b a b a``).

Pure standard library; linear-time n-gram counting and an O(n log n) search for the longest
repeat (binary search on the length, rolling hashes checked against the words on a hit).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+|[^\w\s]")
_MOD = (1 << 61) - 1
_BASE = 1_000_003


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def repeated_ngram_fraction(tokens: list[str], n: int) -> float:
    """``1 - distinct / total`` over the n-grams of ``tokens``; 0.0 when there are none."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(tokens[i : i + n]) for i in range(total)})
    return 1.0 - distinct / total


def top_ngram_count(tokens: list[str], n: int) -> int:
    """Occurrences of the most frequent n-gram of ``tokens`` (0 when there is none)."""
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        counts[gram] = counts.get(gram, 0) + 1
    return max(counts.values(), default=0)


def _repeat_of_length(ids: list[int], k: int) -> bool:
    """Whether some span of ``k`` ids occurs twice (rolling hash; candidates compared exactly)."""
    if k == 0:
        return True
    if k >= len(ids):
        return False
    power = pow(_BASE, k, _MOD)
    h = 0
    for x in ids[:k]:
        h = (h * _BASE + x) % _MOD
    seen: dict[int, list[int]] = {h: [0]}
    for start in range(1, len(ids) - k + 1):
        h = (h * _BASE + ids[start + k - 1] - ids[start - 1] * power) % _MOD
        earlier = seen.setdefault(h, [])
        if any(ids[e : e + k] == ids[start : start + k] for e in earlier):
            return True
        earlier.append(start)
    return False


def longest_repeat(tokens: list[str]) -> int:
    """Length of the longest span of ``tokens`` that occurs at least twice (0 when none does)."""
    index: dict[str, int] = {}
    ids = [index.setdefault(t, len(index) + 1) for t in tokens]
    lo, hi = 0, max(len(ids) - 1, 0)  # a repeat of length k implies one of every length below k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _repeat_of_length(ids, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def repetition(text: str, n: int = 4, top_n: int = 20) -> dict[str, float | int]:
    """``{n_words, rep_ngram_frac, rep_ngram_n, top_ngram_count, top_ngram_n, longest_repeat}`` of ``text``."""
    tokens = words(text)
    return {
        "n_words": len(tokens),
        "rep_ngram_frac": round(repeated_ngram_fraction(tokens, n), 6),
        "rep_ngram_n": n,
        "top_ngram_count": top_ngram_count(tokens, top_n),
        "top_ngram_n": top_n,
        "longest_repeat": longest_repeat(tokens),
    }
