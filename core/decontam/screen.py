"""The block screen: the candidate rule applied to a block of texts at once with numpy.

Tokens are keyed by their bytes and given ids from a numpy hash table; all 5-grams of the block
are probed together against the seed table. The clean majority of texts leaves here; for the
rest the screen hands on the items their seeds make candidates (found exactly: a 5-gram found
by key is compared id by id), so the per-record path only adds anchored and whole items. This is
the one place seed candidates are found.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from still.core.decontam.keytable import GRAM_MUL, KeyTable, gram_keys, token_keys
from still.core.decontam.normalise import prepared
from still.core.decontam.tables import SEED_N, CompiledIndex, TokenIds, distinct, row_ids

SCREEN_BYTES = 1 << 19  # prepared bytes screened at once (larger measured no faster; arrays stay small)
_U64 = np.uint64


def collision_free_keys(ids: np.ndarray, multipliers: Sequence[np.uint64]) -> tuple[np.ndarray, np.uint64]:
    """Keys of 5-gram rows (uint64 ids, one row each), with the first multiplier under which no
    two rows share a key (64-bit keys: a second multiplier is practically never needed)."""
    for multiplier in multipliers:
        keys = gram_keys([ids[:, k] for k in range(SEED_N)], multiplier)
        if np.unique(keys).size == keys.size:
            return keys, multiplier
    raise RuntimeError("no collision-free key for the seed 5-grams")  # ~2**-64 per multiplier


# the default key first; a collision moves on to the next odd multiplier
KEY_MULTIPLIERS = tuple(_U64((int(GRAM_MUL) + 2 * k) % (1 << 64)) for k in range(8))


class BlockScreen:
    """The seed table keyed by 5-gram, CSR item lists, and a growing table of raw token keys ->
    (exact id << 32 | masked id)."""

    def __init__(self, compiled: CompiledIndex, tokens: TokenIds) -> None:
        self.compiled = compiled
        self.tokens = tokens
        n_items = compiled.index.n_items
        grams, gram_of = np.unique(compiled.seed_gram, return_inverse=True)
        ids = row_ids(compiled.seed_rows[grams])
        keys, self.multiplier = collision_free_keys(ids.astype(_U64), KEY_MULTIPLIERS)
        row_keys, row_of = np.unique(keys, return_inverse=True)  # one 5-gram per key, sorted by key
        row_of = row_of.reshape(-1)
        self.gram_ids = np.empty_like(ids)  # row r's 5-gram, id by id
        self.gram_ids[row_of] = ids
        pairs = distinct(row_of[gram_of.reshape(-1)] * n_items + compiled.seed_item)
        self.seed_items = pairs % n_items
        self.seed_offsets = np.searchsorted(pairs // n_items, np.arange(row_keys.size + 1))
        self.rows = KeyTable(row_keys.size)
        self.rows.insert(row_keys, np.arange(row_keys.size, dtype=np.int64))
        self.is_anchor = np.zeros(len(compiled.index.vocab_hashes), dtype=bool)
        self.is_anchor[sorted(compiled.anchors)] = True
        self.token_table = KeyTable()

    def screen(self, texts: Sequence[str]) -> tuple[list[bool], list[list[int]]]:
        """For each text, False when it certainly contains no benchmark item, else True; and the
        items its seeds make candidates."""
        prepared_texts = [prepared(text) for text in texts]
        out: list[bool] = []
        seeds: list[list[int]] = []
        # chunks of texts (and a space after each) under SCREEN_BYTES, at least one text each
        ends = list(itertools.accumulate([len(p) + 1 for p in prepared_texts]))
        start = 0
        while start < len(prepared_texts):
            base = ends[start - 1] if start else 0
            stop = bisect.bisect_left(ends, base + SCREEN_BYTES + 1, lo=start + 1)
            suspect, block_seeds = self.screen_block(prepared_texts[start:stop])
            out.extend(suspect.tolist())
            seeds.extend(block_seeds)
            start = stop
        return out, seeds

    def token_values(self, buf: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """(exact id << 32 | masked id) of each token buf[starts[k]:ends[k]]."""
        keys = token_keys(buf, starts, ends)
        values, found = self.token_table.lookup(keys)
        if not found.all():
            missing = np.flatnonzero(~found)
            new_keys, first_at = np.unique(keys[missing], return_index=True)
            at = missing[first_at]
            raws = [buf[a:b] for a, b in zip(starts[at].tolist(), ends[at].tolist(), strict=True)]
            tokens = self.tokens
            pairs = [tokens.pair(raw) for raw in raws]
            if len(tokens.exact) <= tokens.LIMIT:  # the per-record path's maps too: no second pair()
                for raw, (e, m) in zip(raws, pairs, strict=True):
                    tokens.remember(raw, e, m)
            new_values = np.array([(e << 32) | m for e, m in pairs], dtype=np.int64)
            if self.token_table.count > 1_000_000:  # endless vocabularies (ids, hashes): ~70 MB at most
                self.token_table = KeyTable()
            self.token_table.insert(new_keys, new_values)
            values[missing] = new_values[np.searchsorted(new_keys, keys[missing])]
        return values

    def screen_block(self, prepared_texts: list[bytes]) -> tuple[np.ndarray, list[list[int]]]:
        compiled = self.compiled
        n_texts = len(prepared_texts)
        suspect = np.zeros(n_texts, dtype=bool)
        seeds: list[list[int]] = [[] for _ in prepared_texts]
        buf = b" ".join(prepared_texts)
        size = len(buf)
        if size == 0:
            return suspect | bool(compiled.whole), seeds
        # tokens are the runs of non-space bytes: exactly ``prepared(text).split()``
        in_token = np.zeros(size + 2, dtype=bool)  # padded with a space at each end
        np.not_equal(np.frombuffer(buf, dtype=np.uint8), 32, out=in_token[1:-1])
        # the changes alternate: a token's start, then its end (one scan for both)
        changes = np.flatnonzero(in_token[1:] != in_token[:-1])
        starts = changes[0::2]
        ends = changes[1::2]
        values = self.token_values(buf + bytes(8), starts, ends)
        exact = values >> 32
        masked = values & 0xFFFFFFFF
        text_starts = np.zeros(n_texts + 1, dtype=np.int64)
        np.cumsum([len(p) + 1 for p in prepared_texts], out=text_starts[1:])
        offsets = np.searchsorted(starts, text_starts)  # text r has tokens offsets[r]:offsets[r+1]
        counts = np.diff(offsets)
        owner = np.repeat(np.arange(n_texts), counts)
        if compiled.whole:
            suspect |= counts <= compiled.whole_max
        n_grams = masked.size - SEED_N + 1
        if n_grams > 0:
            ids = masked.astype(_U64)
            rows, found = self.rows.lookup(gram_keys([ids[k : k + n_grams] for k in range(SEED_N)], self.multiplier))
            found &= np.arange(n_grams) + SEED_N <= offsets[owner[:n_grams] + 1]  # within one text
            at = np.flatnonzero(found)
            if at.size:  # a 5-gram found by key is a seed only if its ids are the row's
                grams = sliding_window_view(masked, SEED_N)[at]
                at = at[(self.gram_ids[rows[at]] == grams).all(axis=1)]
            if at.size:
                # Per text, each item's number of distinct shared seeds against its need.
                n_rows = self.seed_offsets.size - 1
                text_row = distinct(owner[at] * n_rows + rows[at])
                text_of, row = text_row // n_rows, text_row % n_rows
                lo = self.seed_offsets[row]
                many = self.seed_offsets[row + 1] - lo
                step = np.repeat(lo - (np.cumsum(many) - many), many)
                items = self.seed_items[step + np.arange(step.size)]
                n_items = compiled.index.n_items
                text_item, shared = np.unique(np.repeat(text_of, many) * n_items + items, return_counts=True)
                enough = shared >= compiled.seed_need[text_item % n_items]
                suspect[text_item[enough] // n_items] = True
                for k in text_item[enough].tolist():
                    seeds[k // n_items].append(k % n_items)
        anchored = self.is_anchor[exact]
        if anchored.any():
            # as the per-record path: an anchored item counts only when all its masked tokens occur
            for r in np.unique(owner[anchored]).tolist():
                if suspect[r]:
                    continue
                a, b = int(offsets[r]), int(offsets[r + 1])
                present = set(masked[a:b].tolist())
                for token in set(exact[a:b][anchored[a:b]].tolist()):
                    if any(compiled.anchor_masked[i] <= present for i in compiled.anchor_items[token]):
                        suspect[r] = True
                        break
        return suspect, seeds
