"""Benchmark decontamination: find benchmark questions inside training records.

How it works (README "still decontam" has the user-facing version):

* **Normalisation.** Text is lower-cased and cut into alphanumeric runs, so whitespace, ``$``,
  braces and punctuation never matter; LaTeX commands lose their backslash and spacing/sizing
  commands (``\\left``, ``\\displaystyle``, ``\\text`` ...) are dropped; ``\\dfrac``/``\\tfrac`` read as
  ``\\frac`` (and a few more aliases); numbers lose leading zeros (AIME's ``023`` is ``23``); other
  scripts go through NFKC and common maths symbols become their LaTeX names (``×`` is ``times``).
* **Index.** Each benchmark item becomes a sequence of token ids; tokens are stored as unsalted
  64-bit xxh3 hashes, in order. That is for size and speed (no re-tokenising the benchmarks per
  run), not confidentiality: hashing a word list recovers most of the text.
* **Candidates.** Every record is cut into word 5-grams with numbers masked; an item sharing enough
  of its (non-boilerplate) 5-grams becomes a candidate. Short items are probed by their exact tokens
  when their rarest token occurs.
* **Block screen.** :meth:`Matcher.match_many` (what the command uses) applies the candidate rule
  to a block of records at once with numpy (tokens keyed by their bytes, ids from a numpy hash
  table, all 5-grams probed together); the clean majority leaves there, and only records that may
  hold an item take the per-record path, so the hits are those of :meth:`Matcher.match`.
* **Methods** scored on candidates only (each can be switched off, and each hit names its method):
  ``ngram``: the record shares at least one word n-gram found in this item only, n adapted to the
  item's length (n = L for items under 8 tokens, else min(13, max(8, L // 3))); ``containment``: the
  1/df-weighted fraction of the item's 5-grams present in the record is at least a threshold (a
  question embedded in a longer prompt scores 1.0); ``digits``: the same fraction on number-masked
  tokens (runs of numbers collapse to one), for items long enough to be specific without their
  numbers (Light-R1 found MATH-500 items that differ from training data only in numbers).
* **Boilerplate.** An n-gram found in more than ``max_df`` benchmark items, or lying inside a known
  instruction phrase ("express your answer as a common fraction"), carries no weight and finds
  no candidates, so "find the value of" alone matches nothing. Other n-grams weigh 1/df.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import xxhash
from numpy.lib.stride_tricks import sliding_window_view

from still import __version__
from still.core.errors import BadInput, StillError, UsageError, require
from still.core.fields import Fields
from still.core.jsonl import Record
from still.core.stats import RunStats

INDEX_FORMAT = "still-decontam-index"
INDEX_VERSION = 1
NORMALISE_VERSION = 1
METHODS = ("ngram", "containment", "digits")
FIELD_CHOICES = ("query", "response", "both")
BENCH_FIELDS = ("problem", "question", "prompt", "query", "text")
ITEM_ID_FIELDS = ("id", "unique_id", "task_id", "question_id", "problem_id")

SEED_N = 5  # candidate and containment gram size
SEED_STRIDE = 1  # records probe every SEED_STRIDE-th 5-gram (2 is faster but misses more short items)
MIN_ITEM_TOKENS = 3  # shorter items can only match a record that is nothing but the item
NGRAM_MIN = 8
NGRAM_MAX = 13
DIGITS_MIN_TOKENS = 10  # masked tokens an item needs for the digit-agnostic method
DIGITS_MIN_WORDS = 6  # of which words (not numbers)

# The per-record path finds seed candidates with numpy for its first records (~0.2 ms each), then
# builds a Python dict of all seeds (~0.2 s for 10k items) that answers in ~0.05 ms.
SEED_DICT_AFTER = 1000
RECENT_TEXTS = 4096  # results remembered by text (queries repeat once per response)
UNK = 0  # a token that no benchmark item contains
NUM = 1  # every number, in the masked view
NUM_TOKEN = "#"

# LaTeX commands (backslash already gone) that only format; dropped on both sides.
DROP_TOKENS = frozenset(
    """left right middle displaystyle textstyle scriptstyle text textbf textit textrm textnormal emph
    mathrm mathbf mathit mathsf mathtt mathbb mathcal operatorname mbox hbox limits nolimits big bigl
    bigr bigm bigg biggl biggr quad qquad hspace vspace dots ldots cdots vdots ddots""".split()
)
ALIASES = {
    "dfrac": "frac",
    "tfrac": "frac",
    "cfrac": "frac",
    "dbinom": "binom",
    "tbinom": "binom",
    "le": "leq",
    "leqslant": "leq",
    "ge": "geq",
    "geqslant": "geq",
    "ne": "neq",
    "cdot": "times",
    "ast": "times",
    "lvert": "vert",
    "rvert": "vert",
    "varepsilon": "epsilon",
    "vartheta": "theta",
    "varphi": "phi",
    "π": "pi",
    "θ": "theta",
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "epsilon",
    "λ": "lambda",
    "μ": "mu",
    "σ": "sigma",
    "φ": "phi",
    "ω": "omega",
    "∞": "infty",
}
# Maths symbols that are not letters: written out so "3 × 4" reads like "3 \\times 4".
SYMBOL_WORDS = {
    "×": "times",
    "·": "times",
    "⋅": "times",
    "÷": "div",
    "≤": "leq",
    "≥": "geq",
    "≠": "neq",
    "√": "sqrt",
    "∞": "infty",
    "°": "circ",
    "∠": "angle",
    "△": "triangle",
    "±": "pm",
}
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

# ASCII letters lower-cased, digits kept, other ASCII bytes become spaces; bytes >= 128 (UTF-8 of
# letters that survived ``_fix_char``) stay, so they remain part of their word.
_BYTE_TABLE = bytes(
    (c + 32) if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32 for c in range(256)
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# Formatting commands, blanked with spaces of the same length so character offsets stay valid.
_LATEX_DROP = re.compile(
    r"\\(?:" + "|".join(sorted(DROP_TOKENS, key=len, reverse=True)) + r")(?![A-Za-z])", re.IGNORECASE
)


def _blank(m: re.Match[str]) -> str:
    return " " * (m.end() - m.start())


def _drop_formatting(text: str) -> str:
    return _LATEX_DROP.sub(_blank, text) if "\\" in text else text


_DIGITS = re.compile(r"\d+")
_U64 = np.uint64
_GRAM_MUL = _U64(0x9E3779B97F4A7C15)


# ----------------------------------------------------------------------------- normalisation


def normalise_token(token: str) -> str:
    """One prepared token (lower-case alphanumerics) in canonical form."""
    token = ALIASES.get(token, token)
    if token[0] == "0" and len(token) > 1:  # zero padding: "023" is "23", "04r" is "4r"
        digits = _DIGITS.match(token)
        assert digits is not None
        token = (digits.group().lstrip("0") or "0") + token[digits.end() :]
    return token


def mask_token(token: str) -> str:
    """The number-masked form of a canonical token: ``NUM_TOKEN`` for numbers."""
    if token.isdigit():
        return NUM_TOKEN
    return _DIGITS.sub(NUM_TOKEN, token) if any(c.isdigit() for c in token) else token


@lru_cache(maxsize=65536)
def _fix_char(char: str) -> str:
    """A non-ASCII character as it takes part in tokens: NFKC, lower-cased, symbols as words."""
    word = SYMBOL_WORDS.get(char)
    if word is not None:
        return f" {word} "
    norm = unicodedata.normalize("NFKC", char).lower()
    return "".join(c if c.isalnum() else " " for c in norm)


def _fix_run(m: re.Match[str]) -> str:
    return "".join(map(_fix_char, m.group()))


_HIGH_BYTES = bytes(0 if c < 128 else 1 for c in range(256))


@lru_cache(maxsize=65536)
def _fixed_run(run: bytes) -> bytes:
    """A run of non-ASCII characters (UTF-8) as :func:`prepared` writes it."""
    return "".join(map(_fix_char, run.decode("utf-8"))).encode("utf-8").translate(_BYTE_TABLE)


def prepared(text: str) -> bytes:
    """The text as lower-case words separated by spaces (UTF-8): what tokens are cut from."""
    text = _drop_formatting(text)
    if text.isascii():
        return text.encode("ascii").translate(_BYTE_TABLE)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: character by character
        return _NON_ASCII.sub(_fix_run, text).encode("utf-8").translate(_BYTE_TABLE)
    # The non-ASCII characters' runs are the runs of bytes >= 128 in UTF-8; found with
    # bytes.find (a regex scan costs ~10x more on a 1 KB text).
    high = data.translate(_HIGH_BYTES)
    parts: list[bytes] = []
    pos = 0
    while (start := high.find(1, pos)) >= 0:
        end = high.find(0, start)
        end = len(data) if end < 0 else end
        parts.append(data[pos:start].translate(_BYTE_TABLE))
        parts.append(_fixed_run(data[start:end]))
        pos = end
    parts.append(data[pos:].translate(_BYTE_TABLE))
    return b"".join(parts)


def prepared_reference(text: str) -> bytes:
    """:func:`prepared` character by character (the definition the fast version must match)."""
    text = _drop_formatting(text)
    if not text.isascii():
        text = _NON_ASCII.sub(_fix_run, text)
    return text.encode("utf-8").translate(_BYTE_TABLE)


def raw_tokens(text: str) -> list[bytes]:
    """Tokens before canonical mapping (aliases, dropped commands, leading zeros)."""
    return prepared(text).split()


_WORD = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff]+")


class _Flat:
    """A text with its non-ASCII runs replaced as :func:`prepared` does, mapping positions back."""

    def __init__(self, text: str) -> None:
        # (prepared start, original start, prepared length, original length) per replaced run
        self.runs: list[tuple[int, int, int, int]] = []
        text = _drop_formatting(text)
        if text.isascii():
            self.text = text
        else:
            parts: list[str] = []
            size = last = 0
            for m in _NON_ASCII.finditer(text):
                parts.append(text[last : m.start()])
                size += m.start() - last
                rep = _fix_run(m)
                self.runs.append((size, m.start(), len(rep), m.end() - m.start()))
                parts.append(rep)
                size += len(rep)
                last = m.end()
            parts.append(text[last:])
            self.text = "".join(parts)
        self.starts = [r[0] for r in self.runs]

    def original(self, pos: int, is_end: bool) -> int:
        k = bisect.bisect_right(self.starts, pos) - 1
        if k < 0:
            return pos
        p_start, o_start, p_len, o_len = self.runs[k]
        if pos < p_start + p_len or (is_end and pos == p_start + p_len):
            return o_start + o_len if is_end else o_start
        return pos - p_start - p_len + o_start + o_len

    def word_spans(self) -> list[tuple[int, int]]:
        """[start, end) in the replaced text of every raw token, in :func:`raw_tokens` order."""
        return [m.span() for m in _WORD.finditer(self.text)]


def tokens_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """Canonical tokens with their [start, end) character offsets in ``text``.

    The same tokens as :func:`raw_tokens` + :func:`normalise_token`; a token next to replaced
    non-ASCII characters may take them into its span.
    """
    flat = _Flat(text)
    out: list[tuple[str, int, int]] = []
    for a, b in flat.word_spans():
        out.append((normalise_token(flat.text[a:b].lower()), flat.original(a, False), flat.original(b, True)))
    return out


def canonical_tokens(text: str) -> list[str]:
    """The canonical token sequence of a text (the same sequence the fast path sees)."""
    return [normalise_token(raw.decode("utf-8")) for raw in raw_tokens(text)]


def token_hash(token: str) -> int:
    return xxhash.xxh3_64_intdigest(token.encode("utf-8"))


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
        h *= _GRAM_MUL
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


# ----------------------------------------------------------------------------- block screening

_MIX1 = _U64(0xFF51AFD7ED558CCD)
_MIX2 = _U64(0xC4CEB9FE1A85EC53)
_LEN_MUL = _U64(0x9FB21C651E98DF25)
_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=_U64)
SCREEN_BYTES = 1 << 19  # prepared bytes screened at once (larger measured no faster; arrays stay small)


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h *= _MIX1
    h ^= h >> _U64(33)
    h *= _MIX2
    h ^= h >> _U64(33)
    return h


def _token_key_long(raw: bytes) -> int:
    """The key of a token longer than 16 bytes (rare: computed one at a time)."""
    return xxhash.xxh3_64_intdigest(raw) | 1


def _mix(h: np.ndarray) -> np.ndarray:
    """A cheap bijective mix, so the top bits (a hash-table slot) depend on every input bit."""
    h *= _MIX1
    h ^= h >> _U64(32)
    return h


def _gram_keys(columns: Sequence[np.ndarray]) -> np.ndarray:
    """64-bit keys of 5-grams of ids, given as one uint64 array per position."""
    h = columns[0].copy()
    for column in columns[1:]:
        h *= _GRAM_MUL
        h += column
    return _mix(h)


def seed_gram_keys(ids: np.ndarray) -> np.ndarray:
    """The keys of all 5-grams of a sequence of ids (uint64): what the screen probes."""
    count = ids.size - SEED_N + 1
    return _gram_keys([ids[k : k + count] for k in range(SEED_N)])


def _distinct(values: np.ndarray) -> np.ndarray:
    """np.unique of a 1-D integer array, by sorting (numpy's hash-based unique is slower here)."""
    values = np.sort(values)
    keep = np.ones(values.size, dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def _row_view(rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D int32 array as single opaque values (for np.unique and np.isin on rows)."""
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    return rows.view(np.dtype((np.void, 4 * rows.shape[1]))).reshape(-1)


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """The int32 rows (of SEED_N ids) behind :func:`_row_view` values."""
    return np.ascontiguousarray(rows).view(np.int32).reshape(-1, SEED_N)


class _KeyTable:
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


# ----------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class BuiltinBenchmark:
    """A public benchmark known by name, loaded with ``datasets`` when online."""

    dataset: str
    config: str | None
    split: str
    text_field: str
    id_field: str | None
    # Not yet pinned: no commit was verified from this (offline) build. When loaded, the resolved
    # fingerprint and a checksum of the rows go into the manifest.
    revision: str | None = None


BUILTINS: dict[str, BuiltinBenchmark] = {
    "aime24": BuiltinBenchmark("HuggingFaceH4/aime_2024", None, "train", "problem", "id"),
    "aime25": BuiltinBenchmark("yentinglin/aime_2025", None, "train", "problem", "id"),
    "amc23": BuiltinBenchmark("zwhe99/amc23", None, "test", "question", "id"),
    "math500": BuiltinBenchmark("HuggingFaceH4/MATH-500", None, "test", "problem", "unique_id"),
    "gsm8k": BuiltinBenchmark("openai/gsm8k", "main", "test", "question", None),
    "gpqa_diamond": BuiltinBenchmark("Idavidrein/gpqa", "gpqa_diamond", "train", "Question", "Record ID"),
    "humaneval": BuiltinBenchmark("openai/openai_humaneval", None, "test", "prompt", "task_id"),
    "mbpp": BuiltinBenchmark("google-research-datasets/mbpp", "full", "test", "text", "task_id"),
    "livecodebench": BuiltinBenchmark(
        "livecodebench/code_generation_lite", "release_v5", "test", "question_content", "question_id"
    ),
}


@dataclass
class Benchmark:
    """One benchmark's items as loaded: name, where from, and (item id, text) pairs."""

    name: str
    source: str
    sha256: str
    field: str
    items: list[tuple[Any, str]]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pick_field(row: dict[str, Any], wanted: str | None, source: str, line: int) -> str:
    if wanted:
        if not isinstance(row.get(wanted), str):
            raise BadInput(source, line, f"no text field {wanted!r} (--bench-field)")
        return wanted
    for name in BENCH_FIELDS:
        if isinstance(row.get(name), str):
            return name
    raise BadInput(source, line, f"no text field ({', '.join(BENCH_FIELDS)}); name it with --bench-field")


def _item_id(row: dict[str, Any], index: int) -> Any:
    for name in ITEM_ID_FIELDS:
        value = row.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return value
    return index


def _rows_from_file(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, row) pairs from JSONL, a JSON list, or Parquet."""
    label = str(path)
    if path.suffix == ".parquet":
        require("pyarrow", "parquet", "Reading a Parquet benchmark file")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise BadInput(label, 0, f"cannot read Parquet: {exc}") from exc
        for i, row in enumerate(table.to_pylist(), 1):
            yield i, row
        return
    data = path.read_bytes()
    head = data.lstrip()[:1]
    if head == b"[":
        try:
            rows = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadInput(label, 0, f"invalid JSON: {str(exc).split(':', 1)[0]}") from exc
        for i, row in enumerate(rows, 1):
            yield i, row
        return
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadInput(label, i, "invalid JSON") from None


def load_benchmark_file(path: Path, name: str, bench_field: str | None) -> Benchmark:
    if not path.is_file():
        raise UsageError(f"--against {path}: no such file")
    items: list[tuple[Any, str]] = []
    field_name: str | None = None
    for index, (line, row) in enumerate(_rows_from_file(path)):
        if not isinstance(row, dict):
            raise BadInput(str(path), line, f"expected a JSON object, got {type(row).__name__}")
        if field_name is None:
            field_name = _pick_field(row, bench_field, str(path), line)
        text = row.get(field_name)
        if not isinstance(text, str):
            raise BadInput(str(path), line, f"no text field {field_name!r}")
        items.append((_item_id(row, index), text))
    if not items:
        raise BadInput(str(path), 0, "no benchmark items")
    return Benchmark(name, str(path), _file_sha256(path), field_name or "", items)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_builtin(name: str) -> Benchmark:
    spec = BUILTINS[name]
    hint = (
        f"built-in benchmark {name!r} ({spec.dataset}) needs the 'datasets' package and network access"
        f"{{why}}; pass a local copy instead: --against path/to/{name}.jsonl (JSONL, JSON or Parquet)"
    )
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise StillError(hint.format(why=" (datasets is not installed: pip install 'still[hub]')"))
    if _offline():
        raise StillError(hint.format(why=" (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)"))
    try:
        import datasets

        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all end here
        raise StillError(hint.format(why=f" (loading failed: {type(exc).__name__})")) from exc
    items: list[tuple[Any, str]] = []
    digest = hashlib.sha256()
    for index, row in enumerate(ds):
        text = row.get(spec.text_field)
        if not isinstance(text, str):
            continue
        digest.update(text.encode("utf-8") + b"\0")
        item_id = row.get(spec.id_field) if spec.id_field else None
        items.append((item_id if isinstance(item_id, (str, int)) else index, text))
    source = f"hf:{spec.dataset}" + (f"/{spec.config}" if spec.config else "") + f":{spec.split}"
    source += f"@{getattr(ds, '_fingerprint', spec.revision or 'unpinned')}"
    return Benchmark(name, source, digest.hexdigest(), spec.text_field, items)


def parse_against(specs: Iterable[str]) -> list[tuple[str, str]]:
    """``--against`` values (repeatable, comma-separated) as (name, file path or built-in name)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part and re.fullmatch(r"[\w.-]+", part.split("=", 1)[0]):
                name, target = part.split("=", 1)
            elif part in BUILTINS and not Path(part).exists():
                name, target = part, part
            else:
                name, target = Path(part).name.split(".", 1)[0], part
            out.append((name, target))
    if not out:
        raise UsageError("--against needs at least one benchmark file or name")
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"benchmark name {dupes[0]!r} given twice; name them with NAME=PATH")
    return out


def load_benchmarks(specs: Iterable[str], bench_field: str | None) -> list[Benchmark]:
    out = []
    for name, target in parse_against(specs):
        path = Path(target)
        if target in BUILTINS and not path.exists():
            out.append(load_builtin(target))
        elif path.exists():
            out.append(load_benchmark_file(path, name, bench_field))
        else:
            known = ", ".join(BUILTINS)
            raise UsageError(f"--against {target}: no such file, and not a built-in benchmark ({known})")
    return out


# ----------------------------------------------------------------------------- the index


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
class _GramTable:
    """Per-item gram hashes (flat, with offsets) and their weights (1/df, 0 for boilerplate)."""

    hashes: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray
    n: np.ndarray  # gram size per item (0 when the method does not apply)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.hashes[a:b], self.weights[a:b]


class DecontamIndex:
    """Benchmark items as token-id sequences, plus the tables matching runs on.

    Persisted as a directory: ``manifest.json`` (benchmarks, checksums, parameters, versions) and
    ``index.npz`` (token hashes, id sequences, item ids as JSON). No text in clear, but not secret:
    the hashes are unsalted and ordered, so a word list recovers most of the benchmark text.
    """

    def __init__(
        self,
        benchmarks: list[dict[str, Any]],
        vocab_hashes: np.ndarray,
        mask_of: np.ndarray,
        token_len: np.ndarray,
        item_tokens: np.ndarray,
        item_offsets: np.ndarray,
        item_bench: np.ndarray,
        item_ids: list[Any],
    ) -> None:
        self.benchmarks = benchmarks
        self.vocab_hashes = vocab_hashes  # uint64, id -> xxh3 of the canonical token
        self.item_tokens = item_tokens  # int32 ids, flat
        self.item_offsets = item_offsets  # int64, N+1
        self.item_bench = item_bench  # int32, N
        self.item_ids = item_ids
        self.mask_of = mask_of  # int32, id -> id of its number-masked form
        self.token_len = token_len  # int8, id -> length of the token (to pick rare anchors)
        self.vocab = {int(h): i for i, h in enumerate(vocab_hashes.tolist()) if i > UNK}

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, benchmarks: Sequence[Benchmark]) -> DecontamIndex:
        vocab: dict[str, int] = {"": UNK, NUM_TOKEN: NUM}
        hashes: list[int] = [0, token_hash(NUM_TOKEN)]
        mask_of: list[int] = [UNK, NUM]
        lengths: list[int] = [0, 1]

        def intern(form: str) -> int:
            idx = vocab.get(form)
            if idx is None:
                idx = vocab[form] = len(hashes)
                hashes.append(token_hash(form))
                mask_of.append(idx)
                lengths.append(min(len(form), 127))
            return idx

        flat: list[int] = []
        offsets = [0]
        bench_of: list[int] = []
        ids: list[Any] = []
        for b, bench in enumerate(benchmarks):
            for item_id, text in bench.items:
                for tok in canonical_tokens(text):
                    idx = intern(tok)
                    mask_of[idx] = intern(mask_token(tok)) if mask_token(tok) != NUM_TOKEN else NUM
                    flat.append(idx)
                offsets.append(len(flat))
                bench_of.append(b)
                ids.append(item_id)
        meta = [
            {"name": bm.name, "source": bm.source, "sha256": bm.sha256, "field": bm.field, "items": len(bm.items)}
            for bm in benchmarks
        ]
        return cls(
            meta,
            np.array(hashes, dtype=_U64),
            np.array(mask_of, dtype=np.int32),
            np.array(lengths, dtype=np.int8),
            np.array(flat, dtype=np.int32),
            np.array(offsets, dtype=np.int64),
            np.array(bench_of, dtype=np.int32),
            ids,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write the index atomically (a temporary directory renamed into place)."""
        directory = Path(directory)
        parent = directory.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".still-index-", dir=parent))
        try:
            arrays = tmp / "index.npz"
            with open(arrays, "wb") as fh:
                np.savez(
                    fh,
                    vocab_hashes=self.vocab_hashes,
                    mask_of=self.mask_of,
                    token_len=self.token_len,
                    item_tokens=self.item_tokens,
                    item_offsets=self.item_offsets,
                    item_bench=self.item_bench,
                    item_ids=np.frombuffer(orjson.dumps(self.item_ids), dtype=np.uint8),
                )
            manifest = self.manifest(_file_sha256(arrays))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            old: Path | None = None
            if directory.exists():
                if not (directory / "manifest.json").exists():
                    raise UsageError(f"{directory} exists and is not a decontam index; not replacing it")
                old = parent / f".{directory.name}.old-{os.getpid()}"
                os.replace(directory, old)  # the old index goes only once the new one is in place
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def manifest(self, arrays_sha256: str) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "still_version": __version__,
            "normalise_version": NORMALISE_VERSION,
            "token_hash": "xxh3_64 of the canonical token (unsalted: not confidential)",
            "benchmarks": self.benchmarks,
            "items": self.n_items,
            "vocabulary": len(self.vocab_hashes),
            "arrays_sha256": arrays_sha256,
        }

    @classmethod
    def load(cls, directory: str | Path) -> DecontamIndex:
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise UsageError(f"--index {directory}: not a decontam index (no manifest.json)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise BadInput(str(manifest_path), 0, f"invalid JSON: {exc}") from exc
        if manifest.get("format") != INDEX_FORMAT:
            raise UsageError(f"--index {directory}: not a decontam index")
        if manifest.get("format_version") != INDEX_VERSION or manifest.get("normalise_version") != NORMALISE_VERSION:
            raise UsageError(
                f"--index {directory}: built by an incompatible version (format {manifest.get('format_version')}, "
                f"normalisation {manifest.get('normalise_version')}); rebuild it with `still decontam index build`"
            )
        arrays_path = directory / "index.npz"
        if not arrays_path.is_file() or _file_sha256(arrays_path) != manifest.get("arrays_sha256"):
            raise UsageError(f"--index {directory}: index.npz is missing or does not match its manifest checksum")
        with np.load(arrays_path, allow_pickle=False) as z:
            index = cls(
                manifest["benchmarks"],
                z["vocab_hashes"],
                z["mask_of"],
                z["token_len"],
                z["item_tokens"],
                z["item_offsets"],
                z["item_bench"],
                orjson.loads(z["item_ids"].tobytes()),
            )
        return index

    def item_slice(self, i: int) -> np.ndarray:
        return self.item_tokens[int(self.item_offsets[i]) : int(self.item_offsets[i + 1])]


# ----------------------------------------------------------------------------- matching


@dataclass
class Hit:
    """One benchmark item found in one field of a record."""

    bench: int
    item: int
    method: str
    score: float
    span: tuple[int, int]
    field: str

    def as_dict(self, index: DecontamIndex) -> dict[str, Any]:
        return {
            "benchmark": index.benchmarks[self.bench]["name"],
            "item": index.item_ids[self.item],
            "method": self.method,
            "score": round(self.score, 4),
            "span": list(self.span),
            "field": self.field,
        }


class Matcher:
    """Compiled tables for one index and one set of parameters; ``match(text)`` finds hits."""

    def __init__(self, index: DecontamIndex, params: IndexParams) -> None:
        params.check()
        self.index = index
        self.params = params
        self.methods = frozenset(params.methods)
        self.token_h = index.vocab_hashes
        self._exact: dict[Any, int] = {}
        self._masked: dict[Any, int] = {}
        self._item_cache: dict[tuple[str, int], tuple[dict[int, float], float]] = {}
        self._anchor_raw: set[bytes] = set()
        # oldest first; an OrderedDict drops its oldest in O(1) (a dict's next(iter()) scans the
        # holes its deletions leave at the front: ~2 us a record at RECENT_TEXTS)
        self._recent: OrderedDict[tuple[str, str], list[Hit]] = OrderedDict()
        self._tokens: _KeyTable | None = None  # the block screen's token table, once used
        self._rows_exact = False
        self._numpy_probes = 0  # per-record seed lookups done with numpy (see SEED_DICT_AFTER)
        self._compile()

    # -- compiling ----------------------------------------------------------------------------

    def _boilerplate_ids(self) -> list[list[int]]:
        phrases = []
        for phrase in BOILERPLATE_PHRASES:
            ids = [self.index.vocab.get(token_hash(t), UNK) for t in canonical_tokens(phrase)]
            phrases.append(ids)
        return phrases

    def _compile(self) -> None:
        index = self.index
        p = self.params
        n_items = index.n_items
        mask_of = index.mask_of
        items = [index.item_slice(i) for i in range(n_items)]
        self.lengths = np.array([x.size for x in items], dtype=np.int64)
        boiler = self._boilerplate_ids()

        # Stage 1: masked 5-grams -> items, boilerplate removed. When records probe only every
        # k-th 5-gram, an item is found this way only if each offset class has two seeds.
        # Computed for all items at once: each position's 5-gram as an id of the distinct rows.
        starts = index.item_offsets[:-1]
        owner = np.repeat(np.arange(n_items), self.lengths)
        masked_flat = np.ascontiguousarray(mask_of[index.item_tokens], dtype=np.int32)
        n_pos = max(masked_flat.size - SEED_N + 1, 0)
        at = np.arange(n_pos) - starts[owner[:n_pos]]  # position in its item
        valid = at <= self.lengths[owner[:n_pos]] - SEED_N
        gram_item, gram_at = owner[:n_pos][valid], at[valid]
        windows = sliding_window_view(masked_flat, SEED_N)[:n_pos][valid]
        rows, gram_id = np.unique(_row_view(windows), return_inverse=True)
        gram_id = gram_id.reshape(-1)
        n_rows = max(rows.size, 1)
        item_gram = _distinct(gram_item * n_rows + gram_id)  # distinct (item, gram), by item
        df = np.bincount(item_gram % n_rows, minlength=n_rows)
        boiler_rows: list[tuple[int, ...]] = []
        for ids in boiler:  # with numbers on either side, as questions put them
            m = [NUM, NUM] + [int(mask_of[i]) if i != UNK else UNK for i in ids] + [NUM, NUM]
            boiler_rows.extend(zip(*(m[k:] for k in range(SEED_N)), strict=False))
        is_boiler = np.zeros(n_rows, dtype=bool)
        is_boiler[: rows.size] = np.isin(rows, _row_view(np.array(boiler_rows, dtype=np.int32).reshape(-1, SEED_N)))
        is_seed = (df <= p.max_df) & ~is_boiler
        seed_at = is_seed[gram_id]
        n_seeds = np.bincount(gram_item[seed_at], minlength=n_items)  # seed positions per item
        parity = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
        for r in range(SEED_STRIDE):
            cls = seed_at & (gram_at % SEED_STRIDE == r)
            distinct = _distinct(gram_item[cls] * n_rows + gram_id[cls]) // n_rows
            parity = np.minimum(parity, np.bincount(distinct, minlength=n_items))
        anchored_mask = parity < 2
        anchored = np.flatnonzero(anchored_mask).tolist()
        # A shared 8-gram shows 4 seeds, a 13-gram 9; a long question needs more.
        full = np.minimum(6, np.maximum(3, -(-3 * n_seeds // 10)))
        need = np.where(anchored_mask, 0, np.minimum(parity, -(-full // SEED_STRIDE)))
        self.seed_need = need.tolist()
        kept = item_gram[is_seed[item_gram % n_rows] & ~anchored_mask[item_gram // n_rows]]
        self._seed_rows_ids = rows  # the distinct masked 5-grams (void rows of SEED_N int32)
        self._seed_item = kept // n_rows  # (item, gram) seed pairs, sorted by item then gram
        self._seed_gram = kept % n_rows
        self._seed_dict: dict[tuple[int, ...], list[int]] | None = None
        # the same pairs grouped by gram (CSR): the items each distinct 5-gram seeds
        by_gram = np.argsort(self._seed_gram, kind="stable")
        self._gram_items = self._seed_item[by_gram]
        self._gram_offsets = np.searchsorted(self._seed_gram[by_gram], np.arange(rows.size + 1))
        self._need = need
        self._seed_keys: frozenset[tuple[int, ...]] = frozenset()

        # Anchored items (short or mostly boilerplate once numbers are masked): their exact
        # 5-grams (or the whole item when shorter), probed only when their rarest token occurs.
        self.exact_table: dict[tuple[int, ...], list[int]] = {}
        self.exact_need = [0] * n_items
        self.anchors: set[int] = set()
        self.anchor_items: dict[int, list[int]] = {}
        self.anchor_sets: dict[int, frozenset[int]] = {}
        self.anchor_masked: dict[int, frozenset[int]] = {}
        self.whole: dict[tuple[int, ...], list[int]] = {}
        n_vocab = len(index.vocab_hashes)
        item_token = _distinct(owner * n_vocab + index.item_tokens)  # distinct (item, token)
        token_df = np.bincount(item_token % n_vocab, minlength=n_vocab).tolist()
        exact_df: Counter[tuple[int, ...]] = Counter()
        exact_grams: dict[int, set[tuple[int, ...]]] = {}
        for i in anchored:
            toks = items[i].tolist()
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
            kept = [g for g in item_exact if exact_df[g] <= p.max_df]
            for g in kept:
                self.exact_table.setdefault(g, []).append(i)
            self.exact_need[i] = min(3, len(kept))
        self.anchors = set(self.anchor_items)
        self.whole_max = max((len(k) for k in self.whole), default=0)
        self.exact_sizes = sorted({len(g) for g in self.exact_table})
        self.exact_keys = frozenset(self.exact_table)

        # Stage 2 tables (numpy hashes with 1/df weights).
        th = self.token_h
        boiler_h: set[int] = set()
        for ids in boiler:
            ph = th[np.array(ids, dtype=np.int64)] if ids else np.empty(0, dtype=_U64)
            ph = np.where(np.array(ids) == UNK, _U64(0), ph) if ids else ph
            for n in range(2, max(p.ngram_max, SEED_N) + 1):
                boiler_h.update(gram_hashes(ph, n).tolist())
        self.boiler_h = np.array(sorted(boiler_h), dtype=_U64)
        lengths = self.lengths
        # ngram_size() for every item at once
        self.ngram_n = np.where(lengths < p.ngram_min, lengths, np.clip(lengths // 3, p.ngram_min, p.ngram_max))
        self.tables: dict[str, _GramTable] = {}
        exact_h = th[index.item_tokens]
        self.tables["ngram"] = self._table(exact_h, lengths, self.ngram_n)
        self.tables["containment"] = self._table(exact_h, lengths, np.minimum(lengths, SEED_N))
        # collapse_numbers() for every item at once: a number right after a number goes
        is_num = masked_flat == NUM
        keep = np.ones(masked_flat.size, dtype=bool)
        keep[1:] = ~(is_num[1:] & is_num[:-1])
        keep[starts[lengths > 0]] = True
        collapsed_len = np.bincount(owner[keep], minlength=n_items)
        words = np.bincount(owner[keep & ~is_num], minlength=n_items)
        digit_n = np.where((collapsed_len >= DIGITS_MIN_TOKENS) & (words >= DIGITS_MIN_WORDS), SEED_N, 0)
        self.tables["digits"] = self._table(th[masked_flat[keep]], collapsed_len, digit_n)

    @property
    def seed_table(self) -> dict[tuple[int, ...], list[int]]:
        """Masked 5-gram -> the items it seeds, for the per-record path (built on first use)."""
        if self._seed_dict is None:
            order = np.argsort(self._seed_gram, kind="stable")  # items stay in increasing order
            grams = self._seed_gram[order]
            items = self._seed_item[order].tolist()
            distinct, first = np.unique(grams, return_index=True)
            bounds = [*first.tolist(), len(items)]
            keys = map(tuple, _row_ids(self._seed_rows_ids[distinct]).tolist())
            self._seed_dict = dict(zip(keys, (items[a:b] for a, b in itertools.pairwise(bounds)), strict=True))
            self._seed_keys = frozenset(self._seed_dict)
        return self._seed_dict

    @property
    def seed_keys(self) -> frozenset[tuple[int, ...]]:
        self.seed_table  # noqa: B018 - builds both
        return self._seed_keys

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

    def _table(self, flat_seq: np.ndarray, seq_lengths: np.ndarray, sizes: np.ndarray) -> _GramTable:
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
        distinct = np.ones(flat.size, dtype=bool)
        distinct[1:] = (flat[1:] != flat[:-1]) | (item[1:] != item[:-1])
        flat, item = flat[distinct], item[distinct]
        offsets = np.searchsorted(item, np.arange(seq_lengths.size + 1)).astype(np.int64)
        keys, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        df = counts[inverse].astype(np.float64)
        weights = 1.0 / df
        weights[df > self.params.max_df] = 0.0
        if self.boiler_h.size:
            weights[np.isin(flat, self.boiler_h)] = 0.0
        return _GramTable(flat, weights, offsets, sizes)

    # -- per record ---------------------------------------------------------------------------

    def token_pair(self, raw: bytes) -> tuple[int, int]:
        """A raw token's (exact id, number-masked id) in this index (``UNK`` when absent)."""
        vocab = self.index.vocab
        canon = normalise_token(raw.decode("utf-8", "replace"))
        masked = mask_token(canon)
        return vocab.get(token_hash(canon), UNK), NUM if masked == NUM_TOKEN else vocab.get(token_hash(masked), UNK)

    def _resolve(self, raws: Sequence[bytes]) -> None:
        """Map tokens seen for the first time to (exact id, masked id); remember anchor tokens."""
        if len(self._exact) > 2_000_000:
            self._exact.clear()
            self._masked.clear()
            self._anchor_raw.clear()
        for raw in raws:
            if raw in self._exact:
                continue
            exact, masked = self.token_pair(raw)
            self._exact[raw] = exact
            self._masked[raw] = masked
            if exact in self.anchors:
                self._anchor_raw.add(raw)

    def token_ids(self, text: str) -> tuple[list[bytes], list[int]]:
        """The text's tokens and their number-masked ids."""
        raws = prepared(text).split()
        try:
            masked = list(map(self._masked.__getitem__, raws))
        except KeyError:  # tokens seen for the first time
            self._resolve(raws)
            masked = list(map(self._masked.__getitem__, raws))
        return raws, masked

    def exact_ids(self, raws: list[bytes]) -> list[int]:
        return list(map(self._exact.__getitem__, raws))

    def _seed_found_numpy(self, masked: list[int]) -> list[int]:
        """Items with enough of their seeds among the record's masked 5-grams, with numpy: no
        Python dict of all 5-grams to build (the first ``SEED_DICT_AFTER`` records use this)."""
        known = self._seed_rows_ids
        if self._tokens is None:
            self._screen_tables()
        # SEED_STRIDE > 1 probes every k-th 5-gram only (decon samples every 10th token).
        windows = sliding_window_view(np.array(masked, dtype=np.int32), SEED_N)[::SEED_STRIDE]
        if self._rows_exact:  # look up by key, then compare the ids: exact
            columns = windows.astype(_U64)
            row, hit = self._seed_rows.lookup(_gram_keys([columns[:, k] for k in range(SEED_N)]))
            at = np.flatnonzero(hit)
            gram = self._row_gram[row[at]]
            shared = _distinct(gram[(_row_ids(known[gram]) == windows[at]).all(axis=1)])
        else:
            rows = _row_view(windows)
            at = np.minimum(np.searchsorted(known, rows), known.size - 1)
            shared = _distinct(at[known[at] == rows])  # the record's distinct masked 5-grams in items
        lo = self._gram_offsets[shared]
        many = self._gram_offsets[shared + 1] - lo
        if many.sum():
            step = np.repeat(lo - (np.cumsum(many) - many), many)
            items, counts = np.unique(self._gram_items[step + np.arange(step.size)], return_counts=True)
            return list(items[counts >= self._need[items]].tolist())
        return []

    def candidates(
        self, raws: list[bytes], masked: list[int], seed_items: list[int] | None = None
    ) -> tuple[list[int], list[int] | None]:
        """Items worth scoring (and the exact ids when they were needed to find them).

        An item is a candidate when the record shares enough of its non-boilerplate masked
        5-grams (3, or 30% of them for long items, at most 6). Items with fewer than two such
        seeds are probed by their exact 5-grams when their rarest token occurs. ``seed_items``:
        the items the seeds make candidates, when the block screen already found them exactly.
        """
        found: set[int] = set()
        if seed_items is not None:
            found.update(seed_items)
        elif len(masked) >= SEED_N and self._seed_rows_ids.size:
            if self._seed_dict is None and self._numpy_probes < SEED_DICT_AFTER:
                self._numpy_probes += 1
                found.update(self._seed_found_numpy(masked))
            else:
                table = self.seed_table
                # SEED_STRIDE > 1 probes every k-th 5-gram only (decon samples every 10th token).
                step = SEED_STRIDE
                grams = zip(
                    masked[::step], masked[1::step], masked[2::step], masked[3::step], masked[4::step], strict=False
                )
                shared = self.seed_keys.intersection(grams)
                if shared:
                    counts = Counter(chain.from_iterable(map(table.__getitem__, shared)))
                    need = self.seed_need
                    found.update(i for i, c in counts.items() if c >= need[i])
        exact: list[int] | None = None
        if self._anchor_raw and not self._anchor_raw.isdisjoint(raws):
            # Probe only when every token of an anchored item occurs somewhere in the record
            # (numbers compared masked first: cheap, and most records stop here).
            present = set(masked)
            items_of = self.anchor_items
            ready = {
                i
                for raw in self._anchor_raw.intersection(raws)
                for i in items_of[self._exact[raw]]
                if self.anchor_masked[i] <= present
            }
            if ready:
                exact = self.exact_ids(raws)
                present_exact = set(exact)
                ready = {i for i in ready if self.anchor_sets[i] <= present_exact}
            if ready and exact is not None:
                exact_counts: Counter[int] = Counter()
                for n in self.exact_sizes:
                    probe = set(zip(*(exact[k:] for k in range(n)), strict=False))
                    exact_counts.update(chain.from_iterable(map(self.exact_table.__getitem__, probe & self.exact_keys)))
                found.update(i for i, c in exact_counts.items() if i in ready and c >= self.exact_need[i])
        if self.whole and len(masked) <= self.whole_max:
            exact = self.exact_ids(raws)
            found.update(self.whole.get(tuple(exact), ()))
        return sorted(found), exact

    def match(self, text: str, field_name: str = "query") -> list[Hit]:
        """Benchmark items found in ``text``. Distillation data repeats each query once per
        response, so the last few thousand results are remembered by text."""
        key = (text, field_name)
        cached = self._recent.get(key)
        if cached is not None:
            return cached
        hits = self._match_uncached(text, field_name)
        if len(self._recent) >= RECENT_TEXTS:
            self._recent.popitem(last=False)
        self._recent[key] = hits
        return hits

    def _match_uncached(self, text: str, field_name: str = "query", seed_items: list[int] | None = None) -> list[Hit]:
        """Hits in one text; ``seed_items``: its seed candidates when the block screen found them."""
        raws, masked = self.token_ids(text)
        cands, exact = self.candidates(raws, masked, seed_items)
        if not cands:
            return []
        exact = exact if exact is not None else self.exact_ids(raws)
        return self._score(text, raws, exact, masked, cands, field_name)

    # -- blocks of records ----------------------------------------------------------------------

    def match_many(self, texts: Sequence[tuple[str, str]]) -> list[list[Hit]]:
        """:meth:`match` for many (text, field name) pairs: the same hits, in order.

        The texts are screened in blocks with numpy (:meth:`screen`); only those the screen
        cannot clear, a few in a hundred in practice, take the per-record path.
        """
        recent = self._recent
        remembered = [recent.get(key) for key in texts]
        keys = list(dict.fromkeys([key for key, hits in zip(texts, remembered, strict=True) if hits is None]))
        if not keys:
            return [hits for hits in remembered if hits is not None]  # all of them
        suspects, seeds = self._screen([text for text, _ in keys])
        found: dict[tuple[str, str], list[Hit]] = {}
        evict = recent.popitem
        for key, suspect, seed_items in zip(keys, suspects, seeds, strict=True):
            hits = found[key] = self._match_uncached(*key, seed_items) if suspect else []
            if len(recent) >= RECENT_TEXTS:
                evict(last=False)
            recent[key] = hits
        return [found[key] if hits is None else hits for key, hits in zip(texts, remembered, strict=True)]

    def screen(self, texts: Sequence[str]) -> list[bool]:
        """For each text, False when it certainly contains no benchmark item (the per-record
        path would find no candidate), True when it may (it then needs :meth:`match`)."""
        return self._screen(texts)[0]

    def _screen(self, texts: Sequence[str]) -> tuple[list[bool], list[list[int] | None]]:
        """:meth:`screen`, and for each text the items its seeds make candidates when the screen
        found them exactly (else None: the per-record path finds them itself)."""
        if self._tokens is None:
            self._screen_tables()
        prepared_texts = [prepared(text) for text in texts]
        out: list[bool] = []
        seeds: list[list[int] | None] = []
        # chunks of texts (and a space after each) under SCREEN_BYTES, at least one text each
        ends = list(itertools.accumulate([len(p) + 1 for p in prepared_texts]))
        start = 0
        while start < len(prepared_texts):
            base = ends[start - 1] if start else 0
            stop = bisect.bisect_left(ends, base + SCREEN_BYTES + 1, lo=start + 1)
            suspect, block_seeds = self._screen_block(prepared_texts[start:stop])
            out.extend(suspect.tolist())
            seeds.extend(block_seeds)
            start = stop
        return out, seeds

    def prepare_screen(self) -> None:
        """Build the block screen's tables now (else the first block builds them): part of
        loading an index, ~0.05 s for 10k items."""
        if self._tokens is None:
            self._screen_tables()

    def _screen_tables(self) -> None:
        """The screen's tables: the seed table as a key table of rows with CSR item lists, and
        an (initially empty) table of raw token keys -> (exact id << 32 | masked id)."""
        n_items = self.index.n_items
        grams, gram_of = np.unique(self._seed_gram, return_inverse=True)
        ids = _row_ids(self._seed_rows_ids[grams]).astype(_U64)
        # Different 5-grams with one key (never seen, but possible) share a row: all their items.
        row_keys, row_of = np.unique(_gram_keys([ids[:, k] for k in range(SEED_N)]), return_inverse=True)
        pairs = _distinct(row_of.reshape(-1)[gram_of.reshape(-1)] * n_items + self._seed_item)
        self._seed_items = pairs % n_items
        self._seed_offsets = np.searchsorted(pairs // n_items, np.arange(row_keys.size + 1))
        self._seed_rows = _KeyTable(row_keys.size)
        self._seed_rows.insert(row_keys, np.arange(row_keys.size, dtype=np.int64))
        # When every row is one 5-gram, a row names its gram, checked id by id (exact) in candidates()
        self._row_gram = np.zeros(row_keys.size, dtype=np.int64)
        self._row_gram[row_of.reshape(-1)] = grams
        self._rows_exact = row_keys.size == grams.size
        self._is_anchor = np.zeros(len(self.index.vocab_hashes), dtype=bool)
        self._is_anchor[sorted(self.anchors)] = True
        self._tokens = _KeyTable()

    def _token_values(self, buf: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """(exact id << 32 | masked id) of each token buf[starts[k]:ends[k]]."""
        assert self._tokens is not None
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
        for k in np.flatnonzero(lengths > 16).tolist():
            keys[k] = _token_key_long(buf[starts[k] : ends[k]])
        values, found = self._tokens.lookup(keys)
        if not found.all():
            missing = np.flatnonzero(~found)
            new_keys, first_at = np.unique(keys[missing], return_index=True)
            at = missing[first_at]
            raws = [buf[a:b] for a, b in zip(starts[at].tolist(), ends[at].tolist(), strict=True)]
            pairs = [self.token_pair(raw) for raw in raws]
            if len(self._exact) <= 2_000_000:  # the per-record path's maps too: no second token_pair
                for raw, (e, m) in zip(raws, pairs, strict=True):
                    self._exact[raw] = e
                    self._masked[raw] = m
                    if e in self.anchors:
                        self._anchor_raw.add(raw)
            new_values = np.array([(e << 32) | m for e, m in pairs], dtype=np.int64)
            if self._tokens.count > 1_000_000:  # endless vocabularies (ids, hashes): ~70 MB at most
                self._tokens = _KeyTable()
            self._tokens.insert(new_keys, new_values)
            values[missing] = new_values[np.searchsorted(new_keys, keys[missing])]
        return values

    def _screen_block(self, prepared_texts: list[bytes]) -> tuple[np.ndarray, list[list[int] | None]]:
        n_texts = len(prepared_texts)
        suspect = np.zeros(n_texts, dtype=bool)
        # Each 5-gram found by key is checked id by id when a row is one 5-gram: then the seed
        # candidates found here are exactly those of ``candidates`` (which probes every 5-gram).
        exact_seeds = self._rows_exact and SEED_STRIDE == 1
        seeds: list[list[int] | None] = [[] if exact_seeds else None for _ in prepared_texts]
        buf = b" ".join(prepared_texts)
        size = len(buf)
        if size == 0:
            return suspect | bool(self.whole), seeds
        # tokens are the runs of non-space bytes: exactly ``prepared(text).split()``
        in_token = np.zeros(size + 2, dtype=bool)  # padded with a space at each end
        np.not_equal(np.frombuffer(buf, dtype=np.uint8), 32, out=in_token[1:-1])
        # the changes alternate: a token's start, then its end (one scan for both)
        changes = np.flatnonzero(in_token[1:] != in_token[:-1])
        starts = changes[0::2]
        ends = changes[1::2]
        values = self._token_values(buf + bytes(8), starts, ends)
        exact = values >> 32
        masked = values & 0xFFFFFFFF
        text_starts = np.zeros(n_texts + 1, dtype=np.int64)
        np.cumsum([len(p) + 1 for p in prepared_texts], out=text_starts[1:])
        offsets = np.searchsorted(starts, text_starts)  # text r has tokens offsets[r]:offsets[r+1]
        counts = np.diff(offsets)
        owner = np.repeat(np.arange(n_texts), counts)
        if self.whole:
            suspect |= counts <= self.whole_max
        n_grams = masked.size - SEED_N + 1
        if n_grams > 0:
            rows, found = self._seed_rows.lookup(seed_gram_keys(masked.astype(_U64)))
            found &= np.arange(n_grams) + SEED_N <= offsets[owner[:n_grams] + 1]  # within one text
            at = np.flatnonzero(found)
            if exact_seeds and at.size:
                grams = sliding_window_view(masked, SEED_N)[at]
                at = at[(_row_ids(self._seed_rows_ids[self._row_gram[rows[at]]]) == grams).all(axis=1)]
            if at.size:
                # Per text, each item's number of distinct shared seeds against its need.
                n_rows = self._seed_offsets.size - 1
                text_row = _distinct(owner[at] * n_rows + rows[at])
                text_of, row = text_row // n_rows, text_row % n_rows
                lo = self._seed_offsets[row]
                many = self._seed_offsets[row + 1] - lo
                step = np.repeat(lo - (np.cumsum(many) - many), many)
                items = self._seed_items[step + np.arange(step.size)]
                n_items = self.index.n_items
                text_item, shared = np.unique(np.repeat(text_of, many) * n_items + items, return_counts=True)
                enough = shared >= self._need[text_item % n_items]
                suspect[text_item[enough] // n_items] = True
                if exact_seeds:
                    for k in text_item[enough].tolist():
                        seed_list = seeds[k // n_items]
                        assert seed_list is not None
                        seed_list.append(k % n_items)
        anchored = self._is_anchor[exact]
        if anchored.any():
            # as ``candidates``: an anchored item counts only when all its masked tokens occur
            for r in np.unique(owner[anchored]).tolist():
                if suspect[r]:
                    continue
                a, b = int(offsets[r]), int(offsets[r + 1])
                present = set(masked[a:b].tolist())
                for token in set(exact[a:b][anchored[a:b]].tolist()):
                    if any(self.anchor_masked[i] <= present for i in self.anchor_items[token]):
                        suspect[r] = True
                        break
        return suspect, seeds

    def _item_grams(self, method: str, i: int) -> tuple[dict[int, float], float]:
        """An item's grams with their weights, and the weights' total (cached: items recur)."""
        key = (method, i)
        got = self._item_cache.get(key)
        if got is None:
            grams, weights = self.tables[method].item(i)
            got = self._item_cache[key] = (
                dict(zip(grams.tolist(), weights.tolist(), strict=True)),
                float(weights.sum()),
            )
        return got

    def _token_spans(self, text: str, raws: list[bytes]) -> tuple[_Flat, list[tuple[int, int]]]:
        """The kept tokens' [start, end) in the replaced text, and the map back to ``text``."""
        flat = _Flat(text)
        return flat, flat.word_spans()

    def _score(
        self, text: str, raws: list[bytes], exact: list[int], masked: list[int], cands: list[int], field_name: str
    ) -> list[Hit]:
        th = self.token_h
        sequences = {"exact": th[np.array(exact, dtype=np.int64)]}
        positions = np.empty(0, dtype=np.int64)
        record_grams: dict[tuple[str, int], tuple[list[int], set[int]]] = {}
        hits: list[Hit] = []
        token_spans: tuple[_Flat, list[tuple[int, int]]] | None = None
        for i in cands:
            best: tuple[float, str, set[int], list[int], int] | None = None
            for method in METHODS:
                if method not in self.methods:
                    continue
                n = int(self.tables[method].n[i])
                if n <= 0:
                    continue
                weights, total = self._item_grams(method, i)
                if total <= 0.0:
                    continue
                kind = "digits" if method == "digits" else "exact"
                rec = record_grams.get((kind, n))
                if kind not in sequences:
                    collapsed, positions = collapse_numbers(masked)
                    sequences[kind] = th[collapsed]
                if rec is None:
                    listed = gram_hashes(sequences[kind], n).tolist()
                    rec = record_grams[(kind, n)] = (listed, set(listed))
                found = rec[1].intersection(weights)
                found_w = list(map(weights.__getitem__, found))
                score = sum(found_w) / total
                if method == "ngram":  # an n-gram of this item only (df 1), not shared boilerplate
                    fired = max(found_w, default=0.0) >= 1.0
                elif method == "containment":
                    fired = score >= self.params.containment - 1e-9
                else:
                    fired = score >= self.params.digits - 1e-9
                if fired and (best is None or score > best[0] + 1e-9):
                    best = (score, method, {g for g, w in zip(found, found_w, strict=True) if w > 0}, rec[0], n)
                    if score >= 1.0 - 1e-9:  # nothing scores higher
                        break
            if best is None:
                continue
            score, method, matched, rec_list, n = best
            where = [k for k, g in enumerate(rec_list) if g in matched]
            first, last = where[0], where[-1] + n - 1
            if method == "digits":
                first = int(positions[first])
                last = int(positions[last + 1]) - 1 if last + 1 < positions.size else len(exact) - 1
            if token_spans is None:
                token_spans = self._token_spans(text, raws)
            flat, spans = token_spans
            span = (
                (flat.original(spans[first][0], False), flat.original(spans[last][1], True))
                if last < len(spans)
                else (0, len(text))
            )
            hits.append(Hit(int(self.index.item_bench[i]), i, method, score, span, field_name))
        return hits


# ----------------------------------------------------------------------------- the command


@dataclass
class DecontamConfig:
    fields: Fields = field(default_factory=Fields)
    check: str = "query"  # query | response | both
    mark: bool = False
    params: IndexParams = field(default_factory=IndexParams)
    skip_bad: bool = False  # --on-error skip/quarantine: count records without the field as errors


@dataclass
class DecontamReport:
    """Per-benchmark counts and the benchmark items that were hit."""

    index: DecontamIndex
    records_hit: int = 0
    bench_records: Counter[int] = field(default_factory=Counter)
    bench_methods: dict[int, Counter[str]] = field(default_factory=dict)
    item_records: Counter[int] = field(default_factory=Counter)

    def add(self, hits: list[Hit]) -> None:
        self.records_hit += 1
        for b in sorted({h.bench for h in hits}):
            self.bench_records[b] += 1
        for item in sorted({h.item for h in hits}):
            self.item_records[item] += 1
        for h in hits:
            self.bench_methods.setdefault(h.bench, Counter())[h.method] += 1

    def as_dict(self, read: int, config: DecontamConfig) -> dict[str, Any]:
        benches = []
        for b, meta in enumerate(self.index.benchmarks):
            hit_items = [
                {"item": self.index.item_ids[i], "records": self.item_records[i]}
                for i in sorted(self.item_records)
                if int(self.index.item_bench[i]) == b
            ]
            benches.append(
                {
                    **meta,
                    "items_hit": len(hit_items),
                    "records_hit": self.bench_records[b],
                    "hits_by_method": dict(sorted(self.bench_methods.get(b, Counter()).items())),
                    "hit_items": hit_items,
                }
            )
        p = config.params
        return {
            "command": "decontam",
            "still_version": __version__,
            "fields": config.check,
            "mode": "mark" if config.mark else "drop",
            "parameters": {
                "methods": list(p.methods),
                "containment": p.containment,
                "digits": p.digits,
                "max_df": p.max_df,
                "ngram_min": p.ngram_min,
                "ngram_max": p.ngram_max,
                "seed_n": SEED_N,
                "normalise_version": NORMALISE_VERSION,
            },
            "records": {"read": read, "contaminated": self.records_hit},
            "benchmarks": benches,
        }

    def summary(self) -> str:
        parts = [f"{self.index.benchmarks[b]['name']} {n}" for b, n in sorted(self.bench_records.items())]
        detail = f" ({', '.join(parts)})" if parts else ""
        return (
            f"still decontam: {self.records_hit} contaminated records{detail}; "
            f"{len(self.item_records)} of {self.index.n_items} benchmark items hit"
        )


def _texts(rec: Record, config: DecontamConfig) -> list[tuple[str, str]]:
    fields = config.fields
    if config.check == "query":
        return [("query", fields.query(rec))]
    if config.check == "response":
        return [("response", fields.response(rec))]
    out = []
    for name, getter in (("query", fields.query), ("response", fields.response)):
        try:
            out.append((name, getter(rec)))
        except BadInput:
            continue
    if not out:
        raise BadInput(rec.source, rec.line, "no query or response field")
    return out


RECORD_BLOCK = 2048  # records matched at once: fewer, fuller screen chunks (2048 x 1 KB: 2 MB held)


def run_decontam(
    records: Iterable[Record], matcher: Matcher, config: DecontamConfig, stats: RunStats, report: DecontamReport
) -> Iterator[Record]:
    """Drop (or with ``mark`` annotate) records that contain benchmark items.

    Records are matched in blocks of ``RECORD_BLOCK`` (:meth:`Matcher.match_many`); the output
    and the accounting are the same as matching them one at a time.
    """
    index = matcher.index
    mark = config.mark
    block: list[Record] = []
    pairs: list[tuple[str, str]] = []  # the block's (text, field name) pairs, record by record
    counts: list[int] = []  # pairs per record (--fields both); empty while every record has one

    def flush() -> Iterator[Record]:
        found = matcher.match_many(pairs)
        if counts:  # a record's hits are those of its texts, in order
            merged: list[list[Hit]] = []
            at = 0
            for n in counts:
                merged.append([h for hits in found[at : at + n] for h in hits])
                at += n
            found = merged
        for rec, hits in zip(block, found, strict=True):
            if hits:
                report.add(hits)
            if mark:
                rec.changed()["decontam"] = [h.as_dict(index) for h in hits]
                yield rec
            elif hits:
                stats.drop("contaminated")
            else:
                yield rec
        block.clear()
        pairs.clear()
        counts.clear()

    query_only = config.check == "query"
    query = config.fields.query
    for rec in records:
        try:
            if query_only:
                pairs.append((query(rec), "query"))
            else:
                texts = [(text, name) for name, text in _texts(rec, config)]
                if len(texts) != 1 and not counts:
                    counts.extend([1] * len(block))
                pairs.extend(texts)
                if counts or len(texts) != 1:
                    counts.append(len(texts))
        except BadInput as exc:
            if not config.skip_bad:
                yield from flush()  # the records before it, as one at a time would have
                raise
            stats.error(exc.message)
            continue
        block.append(rec)
        if len(block) >= RECORD_BLOCK:
            yield from flush()
    yield from flush()
    stats.extra["decontam"] = {
        "contaminated": report.records_hit,
        "by_benchmark": {index.benchmarks[b]["name"]: n for b, n in sorted(report.bench_records.items())},
        "items_hit": len(report.item_records),
    }
