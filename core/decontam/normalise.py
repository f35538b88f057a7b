"""Text normalisation: the canonical tokens that benchmark items and records are compared by.

Text is lower-cased and cut into alphanumeric runs, so whitespace, ``$``, braces and punctuation
never matter; LaTeX commands lose their backslash and spacing/sizing commands (``\\left``,
``\\displaystyle``, ``\\text`` ...) are dropped; ``\\dfrac``/``\\tfrac`` read as ``\\frac`` (and a few
more aliases); numbers lose leading zeros (AIME's ``023`` is ``23``); other scripts go through NFKC
and common maths symbols become their LaTeX names (``×`` is ``times``). Changing any of this
changes ``NORMALISE_VERSION`` (saved indexes record it).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from functools import lru_cache

import xxhash

NORMALISE_VERSION = 1
NUM_TOKEN = "#"  # every number, in the number-masked view

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


def raw_tokens(text: str) -> list[bytes]:
    """Tokens before canonical mapping (aliases, dropped commands, leading zeros)."""
    return prepared(text).split()


_WORD = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff]+")


class FlatText:
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


def canonical_tokens(text: str) -> list[str]:
    """The canonical token sequence of a text (the same sequence the fast path sees)."""
    return [normalise_token(raw.decode("utf-8")) for raw in raw_tokens(text)]


def token_hash(token: str) -> int:
    return xxhash.xxh3_64_intdigest(token.encode("utf-8"))
