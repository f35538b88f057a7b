"""An index compiled for one set of matching parameters: the tables the matcher runs on.

* **Seeds.** Every item is cut into number-masked word 5-grams; a 5-gram found in at most
  ``max_df`` items and not inside a known instruction phrase is a *seed*. A record sharing enough
  of an item's distinct seeds (3, or 30% of them for long items, at most 6) makes it a candidate.
* **Anchors.** Items with fewer than two seeds (short, or mostly boilerplate once numbers are
  masked) are probed by their exact 5-grams when their rarest token occurs; those made of common
  tokens only are found when they are the whole text.
* **Gram tables** per method, for scoring candidates: each item's distinct n-gram hashes with
  weight 1/df (0 above ``max_df`` and inside boilerplate phrases).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from still.core.decontam.index import NUM, UNK, DecontamIndex
from still.core.decontam.keytable import GRAM_MUL
from still.core.decontam.normalise import NUM_TOKEN, canonical_tokens, mask_token, normalise_token, token_hash
from still.core.errors import UsageError

METHODS = ("ngram", "containment", "digits")
SEED_N = 5  # candidate and containment gram size
MIN_ITEM_TOKENS = 3  # shorter items can only match a record that is nothing but the item
NGRAM_MIN = 8
NGRAM_MAX = 13
DIGITS_MIN_TOKENS = 10  # masked tokens an item needs for the digit-agnostic method
DIGITS_MIN_WORDS = 6  # of which words (not numbers)
_U64 = np.uint64

# Instruction phrases that say nothing about which problem it is; their n-grams carry no weight.
BOILERPLATE_PHRASES = (
    "please reason step by step and put your final answer within boxed",
    "put your final answer within boxed",
    "express your answer as a common fraction",
    "express your answer as a common fraction in simplest form",
    "express your answer as a decimal to the nearest tenth",
    "express your answer as a decimal to the nearest hundredth",
    "express your answer in simplest radical form",
    "express your answer in terms of pi",
    "express your answer as a mixed number",
    "express your answer in simplest form",
    "round your answer to the nearest whole number",
    "round your answer to the nearest tenth",
    "round your answer to the nearest hundredth",
    "enter your answer as an ordered pair",
    "enter all the solutions separated by commas",
    "find the remainder when it is divided by",
    "find the remainder when n is divided by",
    "what is the value of",
    "find the value of",
    "where m and n are relatively prime positive integers find m n",
    "find the number of",
    "how many positive integers",
    "let your final answer be",
    "the last line of your response should be of the form answer answer where answer is the answer to the problem",
    # Generic question stems of school and competition maths.
    "what is the units digit of",
    "what is the product of the",
    "what is the sum of all",
    "what is the smallest positive integer",
    "what is the largest positive integer",
    "what is the greatest common divisor of",
    "find the greatest common divisor of",
    "what is the least common multiple of",
    "find the least common multiple of",
    "what is the remainder when",
    "find the remainder when",
    "what is the probability that",
    "as a fraction in lowest terms",
    "give your answer as a fraction",
    "what is the area of the",
    "what is the perimeter of the",
    "find the length of the",
    "how many positive divisors does",
    "how many different ways",
    "find the sum of all",
    "find the smallest positive integer",
    "find the largest possible value of",
    "find the minimum value of",
    "find the maximum value of",
    "compute the value of",
    "in how many ways can",
    "how much money does",
    "how many more",
    "how many hours does it take",
    "remember to put your answer on its own line after answer",
)


def ngram_size(n_tokens: int, ngram_min: int = NGRAM_MIN, ngram_max: int = NGRAM_MAX) -> int:
    """The ``ngram`` method's n for an item of ``n_tokens`` tokens.

    Items shorter than ``ngram_min`` must appear whole; longer ones use n = L // 3 clamped to
    [ngram_min, ngram_max]: an AIME problem (40-80 tokens) gets 13, where one changed word still
    leaves most of its 13-grams intact and a shared 13-gram is hardly ever chance.
    """
    if n_tokens < ngram_min:
        return n_tokens
    return min(ngram_max, max(ngram_min, n_tokens // 3))


def gram_hashes(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """Positional 64-bit hashes of the word n-grams of a token-hash sequence (not deduplicated)."""
    count = token_hashes.size - n + 1
    if count <= 0 or n <= 0:
        return np.empty(0, dtype=_U64)
    h = token_hashes[:count].copy()
    for k in range(1, n):
        h *= GRAM_MUL
        h += token_hashes[k : k + count]
    h ^= h >> _U64(31)
    h *= _U64(0xBF58476D1CE4E5B9)
    h ^= h >> _U64(29)
    h += _U64(n)  # an n-gram never equals an m-gram
    return h


def collapse_numbers(masked: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Masked ids with runs of numbers collapsed to one (``3.5`` vs ``4``), and each kept position."""
    arr = np.asarray(masked, dtype=np.int64)
    is_num = arr == NUM
    keep = np.ones(arr.size, dtype=bool)
    keep[1:] = ~(is_num[1:] & is_num[:-1])
    positions = np.flatnonzero(keep)
    return arr[positions], positions


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique of a 1-D integer array, by sorting (numpy's hash-based unique is slower here)."""
    values = np.sort(values)
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def row_view(rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D int32 array as single opaque values (for np.unique and np.isin on rows)."""
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    return rows.view(np.dtype((np.void, 4 * rows.shape[1]))).reshape(-1)


def row_ids(rows: np.ndarray) -> np.ndarray:
    """The int32 rows (of SEED_N ids) behind :func:`row_view` values."""
    return np.ascontiguousarray(rows).view(np.int32).reshape(-1, SEED_N)


@dataclass
class IndexParams:
    """Run-time matching parameters (recorded in reports)."""

    methods: tuple[str, ...] = METHODS
    containment: float = 0.5
    digits: float = 0.8
    max_df: int = 10
    ngram_min: int = NGRAM_MIN
    ngram_max: int = NGRAM_MAX

    def check(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise UsageError(f"--methods: choose one or more of {', '.join(METHODS)}")
        if not 0 < self.containment <= 1 or not 0 < self.digits <= 1:
            raise UsageError("--containment and --digits thresholds must be in (0, 1]")
        if self.max_df < 1:
            raise UsageError("--max-df must be at least 1")
        if not 2 <= self.ngram_min <= self.ngram_max:
            raise UsageError("need 2 <= --ngram-min <= --ngram-max")


@dataclass
class GramTable:
    """Per-item gram hashes (flat, with offsets) and their weights (1/df, 0 for boilerplate)."""

    hashes: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray
    n: np.ndarray  # gram size per item (0 when the method does not apply)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.hashes[a:b], self.weights[a:b]


def boilerplate_ids(index: DecontamIndex) -> list[list[int]]:
    """Each boilerplate phrase as the index's token ids (``UNK`` for tokens no item has)."""
    return [[index.vocab.get(token_hash(t), UNK) for t in canonical_tokens(phrase)] for phrase in BOILERPLATE_PHRASES]


class CompiledIndex:
    """The tables one index and one set of parameters match with (see the module docstring)."""

    def __init__(self, index: DecontamIndex, params: IndexParams) -> None:
        params.check()
        self.index = index
        self.params = params
        self._compile_seeds()
        self._compile_anchors()
        self._compile_grams()

    def _compile_seeds(self) -> None:
        """Masked 5-grams -> items, boilerplate removed, computed for all items at once: each
        position's 5-gram as an id of the distinct rows."""
        index = self.index
        p = self.params
        n_items = index.n_items
        mask_of = index.mask_of
        self.lengths = np.diff(index.item_offsets).astype(np.int64)
        self.starts = index.item_offsets[:-1]
        self.owner = np.repeat(np.arange(n_items), self.lengths)  # the item of each flat position
        owner = self.owner
        self.masked_flat = masked_flat = np.ascontiguousarray(mask_of[index.item_tokens], dtype=np.int32)
        n_pos = max(masked_flat.size - SEED_N + 1, 0)
        at = np.arange(n_pos) - self.starts[owner[:n_pos]]  # position in its item
        valid = at <= self.lengths[owner[:n_pos]] - SEED_N
        gram_item = owner[:n_pos][valid]
        windows = sliding_window_view(masked_flat, SEED_N)[:n_pos][valid]
        rows, gram_id = np.unique(row_view(windows), return_inverse=True)
        gram_id = gram_id.reshape(-1)
        n_rows = max(rows.size, 1)
        item_gram = distinct(gram_item * n_rows + gram_id)  # distinct (item, gram), by item
        df = np.bincount(item_gram % n_rows, minlength=n_rows)
        boiler_rows: list[tuple[int, ...]] = []
        for ids in boilerplate_ids(index):  # with numbers on either side, as questions put them
            m = [NUM, NUM] + [int(mask_of[i]) if i != UNK else UNK for i in ids] + [NUM, NUM]
            boiler_rows.extend(zip(*(m[k:] for k in range(SEED_N)), strict=False))
        is_boiler = np.zeros(n_rows, dtype=bool)
        is_boiler[: rows.size] = np.isin(rows, row_view(np.array(boiler_rows, dtype=np.int32).reshape(-1, SEED_N)))
        is_seed = (df <= p.max_df) & ~is_boiler
        seed_at = is_seed[gram_id]
        n_seeds = np.bincount(gram_item[seed_at], minlength=n_items)  # seed positions per item
        n_distinct = np.bincount(distinct(gram_item[seed_at] * n_rows + gram_id[seed_at]) // n_rows, minlength=n_items)
        self.anchored = n_distinct < 2
        # A shared 8-gram shows 4 seeds, a 13-gram 9; a long question needs more.
        full = np.minimum(6, np.maximum(3, -(-3 * n_seeds // 10)))
        self.seed_need = np.where(self.anchored, 0, np.minimum(n_distinct, full))
        kept = item_gram[is_seed[item_gram % n_rows] & ~self.anchored[item_gram // n_rows]]
        self.seed_rows = rows  # the distinct masked 5-grams (void rows of SEED_N int32)
        self.seed_item = kept // n_rows  # (item, gram) seed pairs, sorted by item then gram
        self.seed_gram = kept % n_rows

    def _compile_anchors(self) -> None:
        """Anchored items: their exact 5-grams (or the whole item when shorter), probed only when
        their rarest token occurs."""
        index = self.index
        mask_of = index.mask_of
        self.exact_table: dict[tuple[int, ...], list[int]] = {}
        self.exact_need = [0] * index.n_items
        self.anchor_items: dict[int, list[int]] = {}
        self.anchor_sets: dict[int, frozenset[int]] = {}
        self.anchor_masked: dict[int, frozenset[int]] = {}
        self.whole: dict[tuple[int, ...], list[int]] = {}
        n_vocab = len(index.vocab_hashes)
        item_token = distinct(self.owner * n_vocab + index.item_tokens)  # distinct (item, token)
        token_df = np.bincount(item_token % n_vocab, minlength=n_vocab).tolist()
        exact_df: Counter[tuple[int, ...]] = Counter()
        exact_grams: dict[int, set[tuple[int, ...]]] = {}
        for i in np.flatnonzero(self.anchored).tolist():
            toks = index.item_slice(i).tolist()
            anchor = min(toks, key=lambda t: (self._anchor_class(t, token_df[t]), token_df[t], t)) if toks else UNK
            if len(toks) < MIN_ITEM_TOKENS or self._anchor_class(anchor, token_df[anchor]) >= 2:
                # Short and made of common tokens only ("Simplify $(-k + 4) + (-2 + 3k)$"): probing
                # for it would cost every record, so it is found when it is the whole text.
                if toks:
                    self.whole.setdefault(tuple(toks), []).append(i)
                continue
            k = min(SEED_N, len(toks))
            exact_grams[i] = set(zip(*(toks[j:] for j in range(k)), strict=False))
            exact_df.update(exact_grams[i])
            self.anchor_items.setdefault(anchor, []).append(i)
            self.anchor_sets[i] = frozenset(toks)
            self.anchor_masked[i] = frozenset(int(mask_of[t]) for t in toks)
        for i, item_exact in exact_grams.items():
            kept = [g for g in item_exact if exact_df[g] <= self.params.max_df]
            for g in kept:
                self.exact_table.setdefault(g, []).append(i)
            self.exact_need[i] = min(3, len(kept))
        self.anchors = set(self.anchor_items)
        self.whole_max = max((len(k) for k in self.whole), default=0)
        self.exact_sizes = sorted({len(g) for g in self.exact_table})
        self.exact_keys = frozenset(self.exact_table)

    def _anchor_class(self, token: int, df: int) -> int:
        """How common a token is likely to be in any text (lower is rarer): a word of 4+ letters
        that few items use, then a number of 3+ digits, then the rest (items anchored only by
        these are matched whole: probing for them would cost most records)."""
        length = int(self.index.token_len[token])
        is_number = int(self.index.mask_of[token]) == NUM
        if not is_number and length >= 4 and df <= 5:
            return 0
        if is_number and length >= 3:
            return 1
        return 2

    def _compile_grams(self) -> None:
        """Stage 2 tables (numpy hashes with 1/df weights), one per method."""
        index = self.index
        p = self.params
        th = index.vocab_hashes
        boiler_h: set[int] = set()
        for ids in boilerplate_ids(index):
            ph = th[np.array(ids, dtype=np.int64)] if ids else np.empty(0, dtype=_U64)
            ph = np.where(np.array(ids) == UNK, _U64(0), ph) if ids else ph
            for n in range(2, max(p.ngram_max, SEED_N) + 1):
                boiler_h.update(gram_hashes(ph, n).tolist())
        self.boiler_h = np.array(sorted(boiler_h), dtype=_U64)
        lengths = self.lengths
        # ngram_size() for every item at once
        self.ngram_n = np.where(lengths < p.ngram_min, lengths, np.clip(lengths // 3, p.ngram_min, p.ngram_max))
        self.grams: dict[str, GramTable] = {}
        exact_h = th[index.item_tokens]
        self.grams["ngram"] = self._table(exact_h, lengths, self.ngram_n)
        self.grams["containment"] = self._table(exact_h, lengths, np.minimum(lengths, SEED_N))
        # collapse_numbers() for every item at once: a number right after a number goes
        masked_flat, owner = self.masked_flat, self.owner
        is_num = masked_flat == NUM
        keep = np.ones(masked_flat.size, dtype=bool)
        keep[1:] = ~(is_num[1:] & is_num[:-1])
        keep[self.starts[lengths > 0]] = True
        collapsed_len = np.bincount(owner[keep], minlength=index.n_items)
        words = np.bincount(owner[keep & ~is_num], minlength=index.n_items)
        digit_n = np.where((collapsed_len >= DIGITS_MIN_TOKENS) & (words >= DIGITS_MIN_WORDS), SEED_N, 0)
        self.grams["digits"] = self._table(th[masked_flat[keep]], collapsed_len, digit_n)

    def _table(self, flat_seq: np.ndarray, seq_lengths: np.ndarray, sizes: np.ndarray) -> GramTable:
        """Every item's distinct n-gram hashes (sorted), n per item, from the items' sequences
        concatenated (``flat_seq``, ``seq_lengths`` per item); computed for all items of one n at
        once over their concatenation, dropping the grams that straddle two items."""
        hashes: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for n in np.unique(sizes[sizes > 0]).tolist():
            chosen = sizes == n
            which = np.flatnonzero(chosen)
            lengths = seq_lengths[which]
            grams = gram_hashes(flat_seq[np.repeat(chosen, seq_lengths)], n)
            owner = np.repeat(np.arange(which.size), lengths)[: grams.size]
            starts = np.cumsum(lengths) - lengths
            valid = np.arange(grams.size) - starts[owner] <= lengths[owner] - n
            hashes.append(grams[valid])
            owners.append(which[owner[valid]])
        flat = np.concatenate(hashes) if hashes else np.empty(0, dtype=_U64)
        item = np.concatenate(owners) if owners else np.empty(0, dtype=np.int64)
        # by item, then hash: a sort by hash, then a stable one by item (items come nearly
        # sorted) costs less than np.lexsort's two stable sorts; equal pairs are dropped below
        by_hash = np.argsort(flat)
        order = by_hash[np.argsort(item[by_hash], kind="stable")]
        flat, item = flat[order], item[order]
        new_pair = np.ones(flat.size, dtype=bool)
        new_pair[1:] = (flat[1:] != flat[:-1]) | (item[1:] != item[:-1])
        flat, item = flat[new_pair], item[new_pair]
        offsets = np.searchsorted(item, np.arange(seq_lengths.size + 1)).astype(np.int64)
        keys, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        df = counts[inverse].astype(np.float64)
        weights = 1.0 / df
        weights[df > self.params.max_df] = 0.0
        if self.boiler_h.size:
            weights[np.isin(flat, self.boiler_h)] = 0.0
        return GramTable(flat, weights, offsets, sizes)


class TokenIds:
    """Raw tokens (bytes of :func:`prepared` text) -> (exact id, number-masked id) in one index,
    remembered as they are met; tokens of anchored items are remembered apart."""

    LIMIT = 2_000_000  # tokens remembered at most (endless vocabularies: ids, hashes)

    def __init__(self, index: DecontamIndex, anchors: set[int]) -> None:
        self.vocab = index.vocab
        self.anchors = anchors
        self.exact: dict[bytes, int] = {}
        self.masked: dict[bytes, int] = {}
        self.anchor_raw: set[bytes] = set()

    def pair(self, raw: bytes) -> tuple[int, int]:
        """A raw token's (exact id, number-masked id) in this index (``UNK`` when absent)."""
        vocab = self.vocab
        canon = normalise_token(raw.decode("utf-8", "replace"))
        masked = mask_token(canon)
        return vocab.get(token_hash(canon), UNK), NUM if masked == NUM_TOKEN else vocab.get(token_hash(masked), UNK)

    def remember(self, raw: bytes, exact: int, masked: int) -> None:
        self.exact[raw] = exact
        self.masked[raw] = masked
        if exact in self.anchors:
            self.anchor_raw.add(raw)

    def resolve(self, raws: Sequence[bytes]) -> None:
        """Map tokens seen for the first time."""
        if len(self.exact) > self.LIMIT:
            self.exact.clear()
            self.masked.clear()
            self.anchor_raw.clear()
        for raw in raws:
            if raw not in self.exact:
                self.remember(raw, *self.pair(raw))

    def masked_ids(self, raws: list[bytes]) -> list[int]:
        try:
            return list(map(self.masked.__getitem__, raws))
        except KeyError:  # tokens seen for the first time
            self.resolve(raws)
            return list(map(self.masked.__getitem__, raws))

    def exact_ids(self, raws: list[bytes]) -> list[int]:
        return list(map(self.exact.__getitem__, raws))
