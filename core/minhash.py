"""Normalisation, word shingles and vectorised MinHash signatures (datasketch ``affine32``).

Signatures equal ``datasketch.MinHash(num_perm, seed, scheme="affine32",
hashfunc=shingle_hash32)`` fed with the same shingles (a test checks it): the permutation
parameters come from datasketch's own generator, the input hash is pre-mixed with fmix32 and
each permutation is ``a*h + b mod 2**32`` with odd ``a``. Computing them here, block by block
in uint32 numpy, is what makes ``dedup`` fast; the numbers are datasketch's.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xxhash

from still.core.errors import UsageError

NORMALISE_VERSION = 1
SHINGLE_VERSION = 1
NORMALISE_STEPS = ("nfkc", "lower", "space", "punct", "digits")
DEFAULT_NORMALISE = ("nfkc", "lower", "space")

_U64 = np.uint64
_SHINGLE_MUL = _U64(0x9E3779B97F4A7C15)
_BAND_MUL = _U64(0xC2B2AE3D27D4EB4F)
_PUNCT = re.compile(r"[^\w\s]+")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Normaliser:
    """Explicit text normalisation; digits are kept unless ``digits`` is asked for.

    Steps: ``nfkc`` Unicode NFKC; ``lower`` case-fold; ``space`` collapse whitespace;
    ``punct`` drop punctuation; ``digits`` replace every digit run by ``0``.
    """

    steps: tuple[str, ...] = DEFAULT_NORMALISE

    @classmethod
    def parse(cls, text: str) -> Normaliser:
        if text.strip() in ("", "none"):
            return cls(())
        steps = tuple(s.strip() for s in text.split(",") if s.strip())
        bad = [s for s in steps if s not in NORMALISE_STEPS]
        if bad:
            raise UsageError(f"unknown normalisation step {bad[0]!r} (choose from {', '.join(NORMALISE_STEPS)})")
        return cls(tuple(s for s in NORMALISE_STEPS if s in steps))

    def __call__(self, text: str) -> str:
        steps = self.steps
        if "nfkc" in steps and not text.isascii():
            text = unicodedata.normalize("NFKC", text)
        if "lower" in steps:
            text = text.lower()
        if "punct" in steps:
            text = _PUNCT.sub(" ", text)
        if "digits" in steps:
            text = _DIGITS.sub("0", text)
        if "space" in steps or "punct" in steps:
            text = " ".join(text.split())
        return text


def tokens(normalised: str) -> list[str]:
    """Word tokens: whitespace-separated, punctuation attached (so ``x+1`` and ``x-1`` differ)."""
    return normalised.split()


def token_hash(token: str) -> int:
    return xxhash.xxh3_64_intdigest(token.encode("utf-8"))


def shingle_size(n_tokens: int, ngram: int) -> int:
    """Word n-gram size: ``ngram`` for texts of at least 2*ngram tokens, smaller for short ones.

    A short text gets n = max(1, n_tokens // 2), so one changed word in a 6-word question
    does not erase most of its shingles.
    """
    if n_tokens >= 2 * ngram:
        return ngram
    return max(1, n_tokens // 2)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    out: np.ndarray = h ^ (h >> _U64(33))
    return out


def _fmix64_int(h: int) -> int:
    m = (1 << 64) - 1
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & m
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & m
    return h ^ (h >> 33)


def shingle_hash64(shingle: Sequence[str]) -> int:
    """Reference (pure Python) 64-bit hash of one shingle; the vectorised path must equal it."""
    m = (1 << 64) - 1
    h = 0
    for tok in shingle:
        h = (h * 0x9E3779B97F4A7C15 + token_hash(tok)) & m
    return _fmix64_int(h)


def shingle_hash32(shingle: Sequence[str]) -> int:
    """The 32-bit input hash MinHash sees: the 64-bit shingle hash folded (hi ^ lo)."""
    h = shingle_hash64(shingle)
    return (h >> 32) ^ (h & 0xFFFFFFFF)


def shingle_hashes(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the word n-grams of one text's token hashes."""
    count = token_hashes.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=_U64)
    h = token_hashes[:count].copy()
    for k in range(1, n):
        h *= _SHINGLE_MUL
        h += token_hashes[k : k + count]
    return np.unique(_fmix64(h))


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b), from its own generator."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.ascontiguousarray(a, dtype=np.uint32), np.ascontiguousarray(b, dtype=np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    out: np.ndarray = h ^ (h >> np.uint32(16))
    return out


def fold32(h64: np.ndarray) -> np.ndarray:
    return ((h64 >> _U64(32)) ^ (h64 & _U64(0xFFFFFFFF))).astype(np.uint32)


EMPTY = np.uint32(0xFFFFFFFF)


def signatures(shingle_sets: Sequence[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (len(sets) x num_perm, uint32) of 64-bit shingle hash sets.

    Works in chunks of about 8k shingles so the (shingles x num_perm) scratch stays in cache.
    An empty set gets datasketch's empty signature (all 2**32 - 1).
    """
    a, b = permutations(num_perm, seed)
    out = np.full((len(shingle_sets), num_perm), EMPTY, dtype=np.uint32)
    chunk_limit = max(1, (1 << 20) // num_perm)
    start = 0
    n = len(shingle_sets)
    while start < n:
        stop = start
        size = 0
        while stop < n and (size == 0 or size + shingle_sets[stop].size <= chunk_limit):
            size += shingle_sets[stop].size
            stop += 1
        parts = [s for s in shingle_sets[start:stop] if s.size]
        if parts:
            rows = [i for i in range(start, stop) if shingle_sets[i].size]
            lengths = np.fromiter((s.size for s in parts), dtype=np.int64, count=len(parts))
            offsets = np.zeros(len(parts), dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            h = _fmix32(fold32(np.concatenate(parts)))
            scratch = np.multiply.outer(h, a)
            scratch += b
            out[rows] = np.minimum.reduceat(scratch, offsets, axis=0)
        start = stop
    return out


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 32-bit key per (document, band): a hash of the band's ``rows`` signature values.

    Equal bands always give equal keys; unequal bands rarely collide, and every candidate is
    confirmed by exact Jaccard anyway.
    """
    n = sigs.shape[0]
    keys = np.empty((n, bands), dtype=np.uint32)
    s64 = sigs.astype(_U64)
    for j in range(bands):
        h = np.full(n, _U64(j + 1), dtype=_U64)
        for c in range(j * rows, (j + 1) * rows):
            h *= _BAND_MUL
            h += s64[:, c]
        keys[:, j] = fold32(_fmix64(h))
    return keys


def candidate_probability(j: float, bands: int, rows: int) -> float:
    """P(two texts with Jaccard j share at least one band) = 1 - (1 - j**r)**b."""
    return 1.0 - (1.0 - j**rows) ** bands


def choose_bands(threshold: float, num_perm: int, recall_at_threshold: float = 0.99) -> tuple[int, int]:
    """Bands and rows for ``threshold``: the fewest false candidates among the (b, r) with
    P(candidate | J = threshold) >= ``recall_at_threshold``.

    datasketch's optimiser balances false-positive and false-negative areas, which at t=0.8
    gives b=9, r=13 and only P(candidate | J=0.8) = 0.40; we verify every candidate exactly,
    so we can afford more candidates and aim for recall instead.
    """
    best: tuple[float, int, int] | None = None
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if b < 1:
            break
        if candidate_probability(threshold, b, r) < recall_at_threshold:
            continue
        # expected false-candidate mass for J in [0, threshold - 0.1]
        hi = max(threshold - 0.1, 0.0)
        steps = 50
        area = sum(candidate_probability(hi * (i + 0.5) / steps, b, r) for i in range(steps)) * hi / steps
        if best is None or area < best[0] - 1e-12:
            best = (area, b, r)
    if best is None:  # unreachable for sane inputs: r=1 gives the highest probability
        return num_perm, 1
    return best[1], best[2]


def explain(threshold: float, num_perm: int, bands: int, rows: int) -> str:
    lines = [
        f"MinHash: {num_perm} permutations (datasketch affine32), LSH {bands} bands x {rows} rows "
        f"({bands * rows} used), threshold {threshold:g}",
        "P(candidate | J) = 1 - (1 - J^r)^b; every candidate is then confirmed by exact Jaccard",
    ]
    for j in (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
        p = candidate_probability(j, bands, rows)
        bar = "#" * int(round(p * 40))
        lines.append(f"  J={j:4.2f}  P={p:7.4f}  {bar}")
    approx = (1.0 / bands) ** (1.0 / rows)
    lines.append(
        f"S-curve midpoint (1/b)^(1/r) = {approx:.3f}; log10 P(miss at threshold) = "
        f"{math.log10(max(1e-300, 1 - candidate_probability(threshold, bands, rows))):.1f}"
    )
    return "\n".join(lines)
