"""Answer normalisation and the exact fast paths (no SymPy: these run in the parent process).

:func:`light_normalise` only rewrites what cannot change the meaning (unicode, ``\\mathrm{e}``,
``$``); :func:`answer_key` is the aggressive normal form for string equality (the MATH
``strip_string`` family) and number formats (thousands separators ``7,425,000`` ``1 000``
``14{,}916``, currency ``$1,000.99`` ``1,000.99€``, ``.4``, percent words ``28 percent``);
:func:`fast_compare` decides what it can exactly and returns ``None`` for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from still.core.answer_extract import brace_pairs

_UNICODE = {
    "π": "\\pi",
    "−": "-",
    "–": "-",
    "×": "\\times",
    "·": "\\cdot",
    "√": "\\sqrt",
    "∞": "\\infty",
    "°": "^\\circ",
    "≤": "\\le",
    "≥": "\\ge",
    "±": "\\pm",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_E_RE = re.compile(r"\\(?:mathrm|text|mathit|operatorname)\s*\{\s*e\s*\}|\\mathrm\s+e(?![a-zA-Z])")
_BARE_PI_RE = re.compile(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])")
_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_THIN_SPACE_RE = re.compile(r"\\[!,;: ]")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_WS_RE = re.compile(r"\s+")
_SINGLE_LETTER_PAREN_RE = re.compile(r"^\(([A-Za-z])\)$")
# "28\%", "28 %", "28 percent", "28 pct": the percent sign or word after a number.
_PERCENT_RE = re.compile(r"(?<=[\d}.])\s*(?:\\%|%|\\text\{\s*%\s*\}|(?:percentage|percent|pct)(?![a-zA-Z]))")
_PERCENT_MARK_RE = re.compile(r"\d\s*(?:\\%|%|(?:percentage|percent|pct)(?![a-zA-Z]))|\\%")
# Currency signs next to a number (``\$`` and ``$`` are gone already).
_CURRENCY_RE = re.compile(
    r"(?:(?<![\\a-zA-Z])(?:\\euro|\\pounds|\\yen)(?![a-zA-Z])|[€£¥₹₽₩₪₫฿¢])(?=[-+]?[\d.]|$)"
    r"|(?<=\d)[€£¥₹₽₩₪₫฿¢]"
)


_DOUBLED_COMMAND_RE = re.compile(r"\\\\(?=(?:[dt]?frac|sqrt|pi|text|left|right|cdot|times)(?![a-zA-Z]))")


def light_normalise(answer: str) -> str:
    """Semantics-preserving clean-up before math-verify: unicode, ``\\mathrm{e}``, bare ``pi``, ``$``."""
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], answer)
    s = _DOUBLED_COMMAND_RE.sub(lambda m: "\\", s)  # a doubled backslash before a command: an escaping slip
    s = _E_RE.sub("e", s)
    s = _BARE_PI_RE.sub(r"\\pi", s)
    s = s.replace("\\$", "").replace("$", "")
    return s.strip()


def _fix_shorthand(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}`` (after whitespace removal)."""
    if "\\frac" not in s and "\\sqrt" not in s:
        return s
    out: list[str] = []
    i = 0
    n = len(s)
    pairs = brace_pairs(s)

    def arg(j: int) -> tuple[str, int] | None:
        if j >= n:
            return None
        if s[j] == "{":
            close = pairs.get(j)
            if close is None:
                return None
            return s[j : close + 1], close + 1
        if s[j] == "\\":
            m = re.match(r"\\[a-zA-Z]+", s[j:])
            if m:
                return "{" + m.group(0) + "}", j + len(m.group(0))
            return None
        return "{" + s[j] + "}", j + 1

    while i < n:
        if s.startswith("\\frac", i) and not s[i + 5 : i + 6].isalpha():
            a = arg(i + 5)
            b = arg(a[1]) if a else None
            if a and b:
                out.append("\\frac" + a[0] + b[0])
                i = b[1]
                continue
        if s.startswith("\\sqrt", i) and not s[i + 5 : i + 6].isalpha() and s[i + 5 : i + 6] != "[":
            a = arg(i + 5)
            if a:
                out.append("\\sqrt" + a[0])
                i = a[1]
                continue
        out.append(s[i])
        i += 1
    return "".join(out)


def answer_key(answer: str) -> str:
    """Aggressive normal form for string equality (the MATH ``strip_string`` family of rules)."""
    s = light_normalise(answer)
    s = s.replace("\\\\", "\x00")  # keep matrix row separators out of the thin-space rule
    s = _SIZING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _THIN_SPACE_RE.sub("", s)
    s = s.replace("\x00", "\\\\")
    s = _DEGREE_RE.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = _PERCENT_RE.sub("", s)
    s = _WS_RE.sub("", s)
    s = _CURRENCY_RE.sub("", s)
    s = s.replace("{,}", ",")
    s = _fix_shorthand(s)
    s = s.rstrip(".")
    m = _SINGLE_LETTER_PAREN_RE.match(s)
    if m:
        s = m.group(1)
    return s


@dataclass(frozen=True)
class ExactNumber:
    value: Fraction
    kind: str  # "int", "dec" (a finite decimal as written), "frac"
    decimals: int = 0


_MAX_NUMBER_CHARS = 4000  # Python refuses int() on longer digit strings; such answers go to the worker
_INT_RE = re.compile(r"[+-]?\d+")
_GROUPED_RE = re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")  # "0,111" is a decimal comma
_DEC_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_SLASH_RE = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_MIXED_RE = re.compile(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")


def exact_number(key: str) -> ExactNumber | None:
    """The exact value of a plain number in normal form (see :func:`answer_key`), else None."""
    if not key or len(key) > _MAX_NUMBER_CHARS:
        return None
    if _INT_RE.fullmatch(key):
        return ExactNumber(Fraction(int(key)), "int")
    if _GROUPED_RE.fullmatch(key):
        key = key.replace(",", "")
        if "." not in key:
            return ExactNumber(Fraction(int(key)), "int")
    if _DEC_RE.fullmatch(key):
        decimals = len(key.split(".", 1)[1])
        return ExactNumber(Fraction(key.rstrip(".") if key.endswith(".") else key), "dec", decimals)
    m = _FRAC_RE.fullmatch(key) or _SLASH_RE.fullmatch(key)
    if m:
        if m.re is _FRAC_RE:
            sign, num, den = m.group(1), int(m.group(2)), int(m.group(3))
        else:
            sign, num, den = "", int(m.group(1)), int(m.group(2))
        if den == 0:
            return None
        value = Fraction(num, den)
        return ExactNumber(-value if sign == "-" else value, "frac")
    m = _MIXED_RE.fullmatch(key)
    if m and int(m.group(4)) != 0:
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return ExactNumber(-value if m.group(1) == "-" else value, "frac")
    return None


def _terminates(value: Fraction) -> bool:
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def has_pm(s: str) -> bool:
    return "\\pm" in s or "\\mp" in s


def has_percent(answer: str) -> bool:
    """Whether an answer carries a percent sign or word (``28\\%``, ``28 %``, ``28 percent``)."""
    return bool(_PERCENT_MARK_RE.search(answer))


_DEC_COMMA_RE = re.compile(r"[+-]?\d+,\d+")


def decimal_comma(key: str) -> ExactNumber | None:
    """``1000,99`` or ``0,111`` read with a decimal comma, when it cannot be a thousands grouping."""
    if not _DEC_COMMA_RE.fullmatch(key) or _GROUPED_RE.fullmatch(key):
        return None
    return exact_number(key.replace(",", "."))


def fast_compare(
    gold_key: str, pred_key: str, gold_pct: bool = False, pred_pct: bool = False
) -> tuple[bool | None, str, str]:
    """(equal, method, reason) decided without SymPy, or ``(None, ...)`` to ask the worker.

    ``gold_pct``/``pred_pct`` say that a side was written with a percent sign or word (the key
    drops it): ``28\\%`` equals ``28`` (math-verify's rule) and also ``0.28``.
    """
    if gold_key == pred_key and gold_key:
        return True, "string", "same answer after normalisation"
    if has_pm(gold_key) != has_pm(pred_key) and not ("," in gold_key or "," in pred_key):
        return False, "guard:pm", "a ± answer stands for two values, the other side for one"
    g = exact_number(gold_key)
    p = exact_number(pred_key)
    # A decimal comma only where the other side is a decimal with a fractional part: "2,5" may be a list.
    if g is not None and p is None and g.kind == "dec" and g.value.denominator != 1:
        p = decimal_comma(pred_key)
    elif p is not None and g is None and p.kind == "dec" and p.value.denominator != 1:
        g = decimal_comma(gold_key)
    if g is not None and p is not None:
        if g.value == p.value:
            return True, "exact-number", "equal as exact numbers"
        if gold_pct != pred_pct:
            pct, other = (g, p) if gold_pct else (p, g)
            if pct.value / 100 == other.value:
                return True, "exact-number", "equal as exact numbers (a percentage and its fraction)"
        if (g.kind == "dec" and not _terminates(p.value)) or (p.kind == "dec" and not _terminates(g.value)):
            return None, "", ""  # a rounded decimal against 1/3-like values: math-verify + rounding guard
        return False, "exact-number", "different exact numbers"
    return None, "", ""


def top_level_comma(s: str) -> bool:
    """Whether ``s`` has a comma outside any bracket (a bare list such as ``3, 5, 7``)."""
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def as_tuple(answer: str, key: str) -> tuple[str, str]:
    """A bare list written as an ordered tuple ``(a, b)``, for ``ordered_lists``."""
    if top_level_comma(key) and exact_number(key) is None:
        return "(" + answer + ")", "(" + key + ")"
    return answer, key


def gold_text(value: Any) -> str | None:
    """The reference answer as text (JSON numbers too: 27.0 -> "27"); None when unusable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(str(v) for v in value)
    return None
