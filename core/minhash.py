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


def _fmix64_int(h: int) -> int:
    m = (1 << 64) - 1
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & m
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & m
    return h ^ (h >> 33)


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

    @property
    def collapses_space(self) -> bool:
        return "space" in self.steps or "punct" in self.steps

    def __call__(self, text: str, collapse: bool = True) -> str:
        """Normalise ``text``; ``collapse=False`` skips the whitespace collapse for callers that
        only split the result into tokens (the tokens are the same)."""
        steps = self.steps
        if "nfkc" in steps and not text.isascii():
            text = unicodedata.normalize("NFKC", text)
        if "lower" in steps:
            text = text.lower()
        if "punct" in steps:
            text = _PUNCT.sub(" ", text)
        if "digits" in steps:
            text = _DIGITS.sub("0", text)
        if collapse and ("space" in steps or "punct" in steps):
            text = " ".join(text.split())
        return text


def tokens(normalised: str) -> list[bytes]:
    """Word tokens: the UTF-8 bytes split on ASCII whitespace, punctuation attached (so ``x+1``
    and ``x-1`` differ)."""
    return normalised.encode("utf-8", "surrogatepass").split()


_TOKEN_BASE = 0x100000001B3  # odd, so invertible mod 2**64
_M64 = (1 << 64) - 1


def token_hash(token: bytes) -> int:
    """Reference 64-bit token hash: polynomial over the bytes (+1 each) mod 2**64, then fmix64.

    The block path computes the same values for every token at once from prefix sums.
    """
    v = 0
    for c in token:
        v = (v * _TOKEN_BASE + c + 1) & _M64
    return _fmix64_int(v)


_SEQUENCE_BASE = 0x9FB21C651E98DF25  # odd
_SEQUENCE_LEN = 0xD6E8FEB86659FD93


def sequence_key(toks: Sequence[bytes]) -> int:
    """Reference 64-bit key of a token sequence (the exact-duplicate key when whitespace is
    collapsed): sum of token_hash(t_i) * C**i plus len * K, mod 2**64, then fmix64."""
    e = 0
    for i, tok in enumerate(toks):
        e = (e + token_hash(tok) * pow(_SEQUENCE_BASE, i, 1 << 64)) & _M64
    return _fmix64_int((e + len(toks) * _SEQUENCE_LEN) & _M64)


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


def shingle_hash64(shingle: Sequence[bytes]) -> int:
    """Reference (pure Python) 64-bit hash of one shingle; the vectorised path must equal it."""
    m = (1 << 64) - 1
    h = 0
    for tok in shingle:
        h = (h * 0x9E3779B97F4A7C15 + token_hash(tok)) & m
    return _fmix64_int(h)


def shingle_hash32(shingle: Sequence[bytes]) -> int:
    """The 32-bit input hash MinHash sees: the 64-bit shingle hash folded (hi ^ lo)."""
    h = shingle_hash64(shingle)
    return (h >> 32) ^ (h & 0xFFFFFFFF)


def shingle_hashes(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of the word n-grams of one text's token hashes (with repeats, unsorted)."""
    count = token_hashes.size - n + 1
    if count <= 0:
        return np.empty(0, dtype=_U64)
    h = token_hashes[:count].copy()
    for k in range(1, n):
        h *= _SHINGLE_MUL
        h += token_hashes[k : k + count]
    return _fmix64(h)


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


def _power_table(base: int, size: int) -> np.ndarray:
    """base**k mod 2**64 for k < size, as two small cumulative products and one outer product."""
    width = 1 << max(1, (size - 1).bit_length() // 2)
    low = np.full(width, base, dtype=_U64)
    low[0] = 1
    low = np.cumprod(low, dtype=_U64)
    high = np.full((size + width - 1) // width, pow(base, width, 1 << 64), dtype=_U64)
    high[0] = 1
    high = np.cumprod(high, dtype=_U64)
    out: np.ndarray = np.multiply.outer(high, low).reshape(-1)[:size]
    return out


class BlockShingler:
    """Token and shingle hashes for a block of texts at once, in numpy.

    Token hashes come from polynomial prefix sums over the block's bytes: with
    Q[i] = sum_k (c_k + 1) * B**-k, the token s..e hashes to B**e * (Q[e] - Q[s-1]), which is
    exactly :func:`token_hash` before its final mix. Powers of B are cached between blocks.
    """

    def __init__(self, ngram: int) -> None:
        self.ngram = ngram
        self._pow = np.ones(1, dtype=_U64)
        self._inv_pow = np.ones(1, dtype=_U64)
        self._seq_pow = np.ones(1, dtype=_U64)
        self._seq_inv = np.ones(1, dtype=_U64)

    def _powers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pow.size < size:
            size = max(size, 2 * self._pow.size)
            self._pow = _power_table(_TOKEN_BASE, size)
            self._inv_pow = _power_table(pow(_TOKEN_BASE, -1, 1 << 64), size)
        return self._pow, self._inv_pow

    def token_hashes(self, texts: Sequence[str], chunk_bytes: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
        """(token hashes of all texts concatenated, number of tokens per text).

        Texts are hashed in groups of about ``chunk_bytes`` so the per-byte arrays stay in cache.
        """
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        counts = np.zeros(len(texts), dtype=np.int64)
        pieces: list[np.ndarray] = []
        start = 0
        while start < len(encoded):
            stop, size = start, 0
            while stop < len(encoded) and (size == 0 or size + len(encoded[stop]) < chunk_bytes):
                size += len(encoded[stop]) + 1
                stop += 1
            hashes, group_counts = self._hash_group(encoded[start:stop])
            pieces.append(hashes)
            counts[start:stop] = group_counts
            start = stop
        return (np.concatenate(pieces) if pieces else np.empty(0, dtype=_U64)), counts

    def _hash_group(self, encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        buf = b" ".join(encoded)
        n = len(buf)
        counts = np.zeros(len(encoded), dtype=np.int64)
        if n == 0:
            return np.empty(0, dtype=_U64), counts
        c = np.frombuffer(buf, dtype=np.uint8)
        word = ~_WHITESPACE[c]
        edges = np.diff(word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        if starts.size == 0:
            return np.empty(0, dtype=_U64), counts
        ends = np.flatnonzero(edges == -1) - 1
        pw, inv = self._powers(n)
        q = c.astype(_U64)
        q += _U64(1)
        q *= inv[:n]
        np.cumsum(q, out=q)
        before = q[starts - 1]
        before[starts == 0] = 0
        hashes = _fmix64((q[ends] - before) * pw[ends])
        # text i occupies bytes [doc_start[i], doc_start[i] + len(encoded[i])) in buf
        lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
        doc_start = np.zeros(len(encoded), dtype=np.int64)
        np.cumsum(lengths[:-1], out=doc_start[1:])
        owner = np.searchsorted(doc_start, starts, side="right") - 1
        counts = np.bincount(owner, minlength=len(encoded)).astype(np.int64)
        return hashes, counts

    def sequence_keys(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per text, :func:`sequence_key` of its tokens, from the block's token hashes at once."""
        total = hashes.size
        offsets = np.zeros(counts.size, dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        sums = np.zeros(counts.size, dtype=_U64)
        if total:
            if self._seq_pow.size < total:
                size = max(total, 2 * self._seq_pow.size)
                self._seq_pow = _power_table(_SEQUENCE_BASE, size)
                self._seq_inv = _power_table(pow(_SEQUENCE_BASE, -1, 1 << 64), size)
            weighted = hashes * self._seq_pow[:total]
            nonempty = np.flatnonzero(counts)
            starts = offsets[nonempty]
            sums[nonempty] = np.add.reduceat(weighted, starts) * self._seq_inv[starts]
        return _fmix64(sums + counts.astype(_U64) * _U64(_SEQUENCE_LEN))

    def shingles(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, the 64-bit hashes of its word n-grams (with repeats)."""
        return self.shingles_and_keys(texts)[0]

    def shingles_and_keys(self, texts: Sequence[str], keys: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
        """Per text, the word n-gram hashes and (with ``keys``) the token-sequence key."""
        hashes, counts = self.token_hashes(texts)
        seq = self.sequence_keys(hashes, counts) if keys else _EMPTY_U64
        n = self.ngram
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out: list[np.ndarray] = [_EMPTY_U64] * len(texts)
        total = hashes.size - n + 1
        if total > 0:
            h = hashes[:total].copy()
            for k in range(1, n):
                h *= _SHINGLE_MUL
                h += hashes[k : k + total]
            h = _fmix64(h)
        else:
            h = _EMPTY_U64
        for i, cnt in enumerate(counts.tolist()):
            start = int(offsets[i])
            if cnt >= 2 * n:
                # n-grams starting at start .. start+cnt-n stay inside text i
                out[i] = h[start : start + cnt - n + 1]
            elif cnt:
                out[i] = shingle_hashes(hashes[start : start + cnt], shingle_size(cnt, n))
        return out, seq


_EMPTY_U64 = np.empty(0, dtype=_U64)


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b).

    The same draws as ``datasketch.MinHash._init_permutations`` (``RandomState(seed)``, then
    ``a = 2*randint(0, 2**31) + 1`` and ``b = randint(0, 2**32)``), without importing
    datasketch (and scipy) on every run; a test checks they equal datasketch's.
    """
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


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


def signatures(shingle_sets: Sequence[np.ndarray], num_perm: int, seed: int, chunk: int = 1 << 17) -> np.ndarray:
    """MinHash signatures (len(sets) x num_perm, uint32) of 64-bit shingle hash sets.

    Texts are taken in chunks of about ``chunk`` shingles; for each permutation one pass computes
    ``a*h + b`` (uint32 wrap-around is the mod 2**32) over the chunk and a segmented minimum per
    text. The working arrays stay in cache, which makes this several times faster than the
    (shingles x permutations) matrix datasketch builds. An empty set gets datasketch's empty
    signature (all 2**32 - 1).
    """
    a, b = permutations(num_perm, seed)
    a_scalars = [np.uint32(x) for x in a.tolist()]
    b_scalars = [np.uint32(x) for x in b.tolist()]
    out = np.full((num_perm, len(shingle_sets)), EMPTY, dtype=np.uint32)
    rows = [i for i, s in enumerate(shingle_sets) if s.size]
    pos = 0
    while pos < len(rows):
        stop = pos
        size = 0
        while stop < len(rows) and (size == 0 or size + shingle_sets[rows[stop]].size <= chunk):
            size += shingle_sets[rows[stop]].size
            stop += 1
        chunk_rows = rows[pos:stop]
        parts = [shingle_sets[i] for i in chunk_rows]
        offsets = np.zeros(len(parts), dtype=np.int64)
        if len(parts) > 1:
            np.cumsum(np.fromiter((p.size for p in parts[:-1]), dtype=np.int64, count=len(parts) - 1), out=offsets[1:])
        h = _fmix32(fold32(np.concatenate(parts)))
        scratch = np.empty_like(h)
        # contiguous rows (the usual case: no empty texts) take a slice, not a fancy index
        contiguous = chunk_rows[-1] - chunk_rows[0] == len(chunk_rows) - 1
        target: slice | list[int] = slice(chunk_rows[0], chunk_rows[-1] + 1) if contiguous else chunk_rows
        for k in range(num_perm):
            np.multiply(h, a_scalars[k], out=scratch)
            scratch += b_scalars[k]
            out[k, target] = np.minimum.reduceat(scratch, offsets)
        pos = stop
    return np.ascontiguousarray(out.T)


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
