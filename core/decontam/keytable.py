"""A hash table from 64-bit keys to int64 values, probed for whole numpy arrays at once, and the
key functions the block screen uses (raw token bytes, 5-grams of ids)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

_U64 = np.uint64
GRAM_MUL = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xFF51AFD7ED558CCD)
_MIX2 = _U64(0xC4CEB9FE1A85EC53)
_LEN_MUL = _U64(0x9FB21C651E98DF25)
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=_U64)


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h *= _MIX1
    h ^= h >> _U64(33)
    h *= _MIX2
    h ^= h >> _U64(33)
    return h


def _mix(h: np.ndarray) -> np.ndarray:
    """A cheap bijective mix, so the top bits (a hash-table slot) depend on every input bit."""
    h *= _MIX1
    h ^= h >> _U64(32)
    return h


def gram_keys(columns: Sequence[np.ndarray], multiplier: np.uint64 = GRAM_MUL) -> np.ndarray:
    """64-bit keys of n-grams of ids, given as one uint64 array per position."""
    h = columns[0].copy()
    for column in columns[1:]:
        h *= multiplier
        h += column
    return _mix(h)


def token_keys(buf: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit keys of the tokens buf[starts[k]:ends[k]] (``buf`` padded with 8 zero bytes)."""
    lengths = ends - starts
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))  # 8 bytes at each offset
    # a token of up to 8 bytes is its bytes (no token holds a zero byte); longer ones add a hash
    # of their last 8 bytes and length, which with ``first`` covers a token of up to 16 bytes
    keys = words[starts] & _LOW_BYTES[np.minimum(lengths, 8)]
    longer = np.flatnonzero(lengths > 8)
    if longer.size:
        tail = words[ends[longer] - 8] + lengths[longer].astype(_U64) * _LEN_MUL
        keys[longer] ^= _fmix(tail)
    keys = _mix(keys)
    for k in np.flatnonzero(lengths > 16).tolist():  # rare: one at a time
        keys[k] = xxhash.xxh3_64_intdigest(buf[starts[k] : ends[k]]) | 1
    return keys


class KeyTable:
    """An open-addressing hash table from uint64 keys (well-mixed hashes) to int64 values,
    probed for whole arrays at once; at most a quarter full, so most keys need one probe.

    An empty slot holds key 0, so a lookup reads one array to learn whether a key is there (and
    the values only where it is); the key 0 itself, if ever inserted, is kept aside."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._allocate(capacity)
        self.count = 0
        self._has_zero = False
        self._zero_value = 0

    def _allocate(self, capacity: int) -> None:
        size = 1 << max(10, (4 * capacity - 1).bit_length())
        self.shift = _U64(64 - (size.bit_length() - 1))
        self.mask = size - 1
        self.keys = np.zeros(size, dtype=_U64)
        self.values = np.zeros(size, dtype=np.int64)
        self.used = np.zeros(size, dtype=bool)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> self.shift).astype(np.int64)  # keys are well-mixed hashes already

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add distinct keys that are not in the table yet."""
        self.count += keys.size
        zero = keys == 0
        if zero.any():
            self._has_zero = True
            self._zero_value = int(values[zero][0])
            keys, values = keys[~zero], values[~zero]
        if 4 * self.count > self.keys.size:  # grow: rehash everything
            old_keys, old_values = self.keys[self.used], self.values[self.used]
            self._allocate(self.count)
            self._place(old_keys, old_values)
        self._place(keys, values)

    def _place(self, keys: np.ndarray, values: np.ndarray) -> None:
        pos = self._slots(keys)
        todo = np.arange(keys.size)
        while todo.size:
            at = pos[todo]
            free = ~self.used[at]
            # one key per free slot claims it this round; the rest probe the next slot
            _, first = np.unique(at[free], return_index=True)
            won = todo[free][first]
            self.keys[pos[won]] = keys[won]
            self.values[pos[won]] = values[won]
            self.used[pos[won]] = True
            left = np.ones(todo.size, dtype=bool)
            left[np.flatnonzero(free)[first]] = False
            todo = todo[left]
            pos[todo] = (pos[todo] + 1) & self.mask

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, found) for each key; values are 0 where not found."""
        pos = self._slots(keys)
        table_keys = self.keys
        at_keys = table_keys[pos]
        found = at_keys == keys  # (a key 0 "found" in an empty slot is settled below)
        todo = np.flatnonzero(~found & (at_keys != 0))  # slot taken by another key: probe on
        while todo.size:
            at = (pos[todo] + 1) & self.mask
            pos[todo] = at
            at_keys = table_keys[at]
            hit = at_keys == keys[todo]
            found[todo[hit]] = True
            todo = todo[~hit & (at_keys != 0)]
        where = np.flatnonzero(found)
        if 4 * where.size > keys.size:  # mostly found (tokens): one gather
            values = np.where(found, self.values[pos], 0)
        else:  # mostly absent (5-grams of clean text): read the values only where found
            values = np.zeros(keys.size, dtype=np.int64)
            values[where] = self.values[pos[where]]
        zero = np.flatnonzero(keys == 0)
        if zero.size:
            found[zero] = self._has_zero
            values[zero] = self._zero_value if self._has_zero else 0
        return values, found
