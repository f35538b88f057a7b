"""Math and short-answer checking: answer extraction, fast exact paths, math-verify with guards.

The pipeline for one record (docs/verify.md documents each rule):

1. Reasoning: the answer is read after the last ``</think>``. A response that opens ``<think>`` and
   never closes it, or whose ``finish_reason`` is ``length``, is ``truncated`` (never ``wrong``).
   R1-distill templates put the opening ``<think>`` in the prompt, so a lone ``</think>`` is normal.
2. Extraction, first hit wins: the last ``\\boxed{}``/``\\fbox{}`` (balanced braces), the last
   "final answer is ...", the last "Answer: ..." / "A: ..." line, then the configured fallbacks
   (``last-number``, ``last-math``, ``last-line``). Nothing found: ``no_answer``.
3. Equivalence, cheapest first, in the parent process:
   a. normalised string equality (``$``, ``\\left``, ``\\dfrac``, thin spaces, ``\\text{}``,
      degrees, ``\\%``, ``\\$``, whitespace);
   b. exact numbers: integers (``023`` == ``23``; never a relative tolerance), decimals, ``a/b``,
      ``\\frac{a}{b}`` and mixed numbers compared as :class:`fractions.Fraction`;
   then, in a killable worker process (:mod:`still.core.procpool`):
   c. math-verify ``parse`` + ``verify`` on the answers wrapped in ``\\boxed{}`` (so bare text such
      as ``pi/2`` is read as LaTeX, and a partial match such as the ``0`` of ``...=0`` cannot stand
      in for the whole answer);
   d. guards that veto math-verify's known false positives: equations that did not parse as
      equations, ``\\pm`` against a single value, numeric values that differ at 30-digit precision
      (``1/2004!`` vs ``1/2006!``, ``1/2^{99}`` vs ``1/2^{98}``), and decimals that are not the
      exact value correctly rounded to the digits given.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

# ----------------------------------------------------------------------------------------------
# Reasoning blocks and extraction

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
FALLBACKS = ("last-number", "last-math", "last-line")


def answer_region(response: str, finish_reason: Any = None) -> tuple[str | None, str]:
    """The text that may hold the final answer, or ``(None, why)`` when the response is truncated."""
    if isinstance(finish_reason, str) and finish_reason.lower() == "length":
        return None, "finish_reason is length"
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        region = response[close + len(THINK_CLOSE) :]
        if THINK_OPEN in region:
            return None, "a later <think> block never closed"
        return region, ""
    if THINK_OPEN in response:
        return None, "reasoning never closed (<think> without </think>)"
    return response, ""


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _braced(text: str, start: int) -> str | None:
    """Content of the balanced ``{...}`` group opening at ``text[start]``, or None if unclosed."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (also ``\\boxed 5``)."""
    matches = list(_BOX_RE.finditer(text))
    for m in reversed(matches):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            content = _braced(text, j)
            if content is not None:
                return content
        elif j > m.end():  # "\boxed 5": one token
            token = re.match(r"[^\s$]+", text[j:])
            if token:
                return token.group(0)
    return None


_FINAL_RE = re.compile(r"final answer\s*(?:is|:)\s*[:：]?\s*(.+)", re.IGNORECASE)
_ANSWER_LINE_RE = re.compile(
    r"^[ \t>*#_-]*(?:\*\*)?(?:(?:final\s+)?answer|A)(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.+?)\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_LOWER_A_RE = re.compile(r"(?:\*\*)?a(?:\*\*)?\s*[:：]")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$([^$]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_HOPE_RE = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.IGNORECASE)


def _clean(answer: str) -> str:
    s = _HOPE_RE.sub("", answer.strip())
    s = s.strip().strip("*").strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    # Drop math delimiters around the whole answer.
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s.rstrip(".").strip()


def extract_answer(text: str, fallbacks: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """(answer, method) from the answer region; ``(None, "")`` when nothing is found."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip(), "boxed"
    finals = list(_FINAL_RE.finditer(text))
    if finals:
        cand = _clean(finals[-1].group(1))
        if cand:
            return cand, "final-answer"
    lines = list(_ANSWER_LINE_RE.finditer(text))
    # "A:" only counts in upper case (a lower-case "a:" is prose), "Answer:" in any case.
    lines = [m for m in lines if not _LOWER_A_RE.match(m.group(0).lstrip(" \t>*#_-"))]
    if lines:
        cand = _clean(lines[-1].group(1))
        if cand:
            return cand, "answer-line"
    for name in fallbacks:
        if name == "last-number":
            nums = _NUMBER_RE.findall(text)
            if nums:
                return nums[-1].rstrip(","), "fallback:last-number"
        elif name == "last-math":
            maths = _MATH_RE.findall(text)
            if maths:
                cand = next((g for g in maths[-1] if g), "").strip()
                if cand:
                    return cand, "fallback:last-math"
        elif name == "last-line":
            nonempty = [ln for ln in text.splitlines() if ln.strip()]
            if nonempty:
                cand = _clean(nonempty[-1])
                if cand:
                    return cand, "fallback:last-line"
    return None, ""


# ----------------------------------------------------------------------------------------------
# Normalisation and exact fast paths (no SymPy in the parent process)

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
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_WS_RE = re.compile(r"\s+")
_SINGLE_LETTER_PAREN_RE = re.compile(r"^\(([A-Za-z])\)$")


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
    out: list[str] = []
    i = 0
    n = len(s)

    def arg(j: int) -> tuple[str, int] | None:
        if j >= n:
            return None
        if s[j] == "{":
            body = _braced(s, j)
            if body is None:
                return None
            return "{" + body + "}", j + len(body) + 2
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
    s = s.replace("\\%", "").replace("%", "")
    s = _TEXT_RE.sub(r"\1", s)
    s = _WS_RE.sub("", s)
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
_GROUPED_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
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


def fast_compare(gold_key: str, pred_key: str) -> tuple[bool | None, str, str]:
    """(equal, method, reason) decided without SymPy, or ``(None, ...)`` to ask the worker."""
    if gold_key == pred_key and gold_key:
        return True, "string", "same answer after normalisation"
    if has_pm(gold_key) != has_pm(pred_key) and not ("," in gold_key or "," in pred_key):
        return False, "guard:pm", "a ± answer stands for two values, the other side for one"
    g = exact_number(gold_key)
    p = exact_number(pred_key)
    if g is not None and p is not None:
        if g.value == p.value:
            return True, "exact-number", "equal as exact numbers"
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


# ----------------------------------------------------------------------------------------------
# The worker side: math-verify plus guards (runs in a killable process)

_WORKER_CACHE: dict[str, Any] = {}
_WORKER_CACHE_MAX = 4096
_EQ_RE = re.compile(r"(?<![<>!\\])=")
_DEC_LITERAL_RE = re.compile(r"\d*\.(\d+)")


def _quiet_logs() -> None:
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _mv_parse(answer: str) -> list[Any]:
    cached = _WORKER_CACHE.get(answer)
    if cached is not None:
        return list(cached)
    from math_verify import LatexExtractionConfig, parse

    parsed = parse(
        "\\boxed{" + answer + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
        parsing_timeout=None,  # no SIGALRM: time is capped by killing the worker
    )
    if len(_WORKER_CACHE) >= _WORKER_CACHE_MAX:
        _WORKER_CACHE.clear()
    _WORKER_CACHE[answer] = tuple(parsed)
    return list(parsed)


def _first_expr(parsed: list[Any]) -> Any:
    from sympy import Basic, MatrixBase

    return next((x for x in parsed if isinstance(x, (Basic, MatrixBase))), None)


def _is_relation(expr: Any) -> bool:
    from sympy.core.relational import Relational

    if isinstance(expr, Relational):
        return True
    raw_args: Any = getattr(expr, "_unsorted_args", None) or getattr(expr, "args", ())
    args = tuple(raw_args)
    return type(expr).__name__ == "And" and bool(args) and all(isinstance(a, Relational) for a in args)


def _numeric_value(expr: Any) -> Any:
    from sympy import Expr

    if isinstance(expr, Expr) and not expr.free_symbols and expr.is_number:
        return expr
    return None


def _guard(gold: str, pred: str, g_parsed: list[Any], p_parsed: list[Any]) -> tuple[str, str] | None:
    """A (name, reason) veto of a math-verify "equal", or None when the verdict stands."""
    g_expr = _first_expr(g_parsed)
    p_expr = _first_expr(p_parsed)
    for text, expr in ((gold, g_expr), (pred, p_expr)):
        if _EQ_RE.search(text) and expr is not None and not _is_relation(expr):
            if "," not in text and "\\in" not in text:
                return "guard:equation", "an equation was read only in part"
    if has_pm(gold) != has_pm(pred):
        from sympy import FiniteSet, Tuple

        other = p_expr if has_pm(gold) else g_expr
        if not isinstance(other, (FiniteSet, Tuple)) or len(other) < 2:
            return "guard:pm", "a ± answer stands for two values, the other side for one"
    g_num = _numeric_value(g_expr)
    p_num = _numeric_value(p_expr)
    if g_num is None or p_num is None:
        return None
    from sympy import Abs, Float

    try:
        gv = g_num.evalf(40)
        pv = p_num.evalf(40)
        diff = Abs((gv - pv).evalf(40))
        has_float = bool(g_num.atoms(Float) or p_num.atoms(Float))
        if has_float:
            decimals = [len(d) for d in _DEC_LITERAL_RE.findall(gold + " " + pred)]
            if decimals:
                tolerance = Float(5, 40) * Float(10, 40) ** (-max(decimals) - 1) * Float("1.000000001", 40)
                if bool(diff > tolerance):
                    return "guard:rounding", "the decimal is not the exact value rounded to its digits"
            return None
        scale = max(Abs(gv), Abs(pv))
        if bool(diff > scale * Float("1e-25", 40)):
            return "guard:precision", "values differ at 40-digit precision"
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return None
    return None


_PROBE_VALUES = ("7/3", "11/5", "13/7", "17/11", "19/13", "23/17", "29/19", "31/23")


def _clearly_different(g_expr: Any, p_expr: Any) -> bool:
    """True when two plain expressions take different values (at 30 digits) at the same point.

    Skips math-verify's slow ``simplify`` for the common wrong answer. Only for ordinary
    expressions with the same free symbols and no decimals (relations, sets, matrices, decimals,
    percentages and text go to math-verify), so it never rejects what math-verify would accept.
    """
    from sympy import Abs, Expr, Float, Rational

    if not isinstance(g_expr, Expr) or not isinstance(p_expr, Expr):
        return False
    symbols = g_expr.free_symbols
    if symbols != p_expr.free_symbols or len(symbols) > len(_PROBE_VALUES):
        return False
    if g_expr.atoms(Float) or p_expr.atoms(Float):
        return False
    point = {sym: Rational(v) for sym, v in zip(sorted(symbols, key=str), _PROBE_VALUES)}
    try:
        gv = g_expr.subs(point).evalf(30)
        pv = p_expr.subs(point).evalf(30)
        if not (gv.is_number and pv.is_number) or gv.has(Float("nan")) or pv.has(Float("nan")):
            return False
        if not (gv.is_finite and pv.is_finite):
            return False
        diff = Abs(gv - pv).evalf(30)
        scale = max(Abs(gv).evalf(30), Abs(pv).evalf(30), Float(1))
        return bool(diff > scale * Float("1e-20", 30))
    except (TypeError, ValueError, ArithmeticError, AttributeError, RecursionError):
        return False


def compare_in_worker(payload: tuple[str, str]) -> tuple[bool, str, str]:
    """Worker handler: (equal, method, reason) for already-extracted gold and predicted answers."""
    _quiet_logs()
    from math_verify import verify

    gold, pred = payload
    g_parsed = _mv_parse(gold)
    p_parsed = _mv_parse(pred)
    if not g_parsed:
        return False, "math-verify", "reference answer could not be parsed"
    if not p_parsed:
        return False, "math-verify", "answer could not be parsed"
    if "%" not in gold + pred and _clearly_different(_first_expr(g_parsed), _first_expr(p_parsed)):
        return False, "numeric-probe", "different values at a probe point"
    equal = verify(g_parsed, p_parsed, timeout_seconds=None)
    if not equal:
        return False, "math-verify", "not equivalent"
    veto = _guard(gold, pred, g_parsed, p_parsed)
    if veto is not None:
        return False, veto[0], veto[1]
    return True, "math-verify", "equivalent"


# ----------------------------------------------------------------------------------------------
# The parent side: one checker per run, its worker pool started on first need

VERDICTS = ("correct", "wrong", "no_answer", "truncated", "timeout", "error")
WORKER_PRELOAD = ("still.core.mathwarm",)


def make_verdict(verdict: str, extracted: str | None, method: str, reason: str) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "score": 1.0 if verdict in ("correct", "pass") else 0.0,
        "extracted": extracted,
        "method": method,
        "reason": reason,
    }


@dataclass(frozen=True)
class MathConfig:
    """Options for math and short answers (docs/verify.md)."""

    timeout_s: float = 2.0
    workers: int = 1
    fallbacks: tuple[str, ...] = ()
    worker_memory_mb: int = 4096
    ordered_lists: bool = False  # bare "a, b, c" as an ordered tuple (MATH's string grader) instead of a set


@dataclass
class PendingMath:
    """A record waiting for the worker; :meth:`MathChecker.finish` turns it into a verdict."""

    task: Any
    extracted: str
    how: str
    cache_key: tuple[str, str]

    @property
    def done(self) -> bool:
        return bool(self.task.done)


class MathChecker:
    """Extraction and fast paths here; math-verify in a :class:`~still.core.procpool.KillablePool`."""

    def __init__(self, config: MathConfig) -> None:
        for name in config.fallbacks:
            if name not in FALLBACKS:
                raise ValueError(f"unknown fallback {name!r} (choose from {', '.join(FALLBACKS)})")
        self.config = config
        self._pool: Any = None
        self._cache: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.worker_calls = 0

    @property
    def pool(self) -> Any:
        if self._pool is None:
            from still.core.errors import require
            from still.core.procpool import KillablePool

            require("math_verify", "verify", "checking math answers beyond exact matches")

            self._pool = KillablePool(
                "still.core.verify_math:compare_in_worker",
                workers=self.config.workers,
                timeout_s=self.config.timeout_s,
                preload=WORKER_PRELOAD,
                memory_mb=self.config.worker_memory_mb,
            )
        return self._pool

    def start(self, gold: str, response: str, finish_reason: Any = None) -> dict[str, Any] | PendingMath:
        """A verdict now, or a :class:`PendingMath` whose task the pool is working on."""
        region, why = answer_region(response, finish_reason)
        if region is None:
            return make_verdict("truncated", None, "think", why)
        extracted, how = extract_answer(region, self.config.fallbacks)
        if extracted is None:
            return make_verdict("no_answer", None, "extract", "no boxed answer, final-answer phrase or Answer: line")
        gold_key = answer_key(gold)
        pred_key = answer_key(extracted)
        gold_mv, pred_mv = light_normalise(gold), light_normalise(extracted)
        if self.config.ordered_lists:
            gold_mv, gold_key = as_tuple(gold_mv, gold_key)
            pred_mv, pred_key = as_tuple(pred_mv, pred_key)
        equal, method, reason = fast_compare(gold_key, pred_key)
        if equal is not None:
            return make_verdict("correct" if equal else "wrong", extracted, f"{how}/{method}", reason)
        key = (gold_key, pred_key)
        hit = self._cache.get(key)
        if hit is not None:
            return make_verdict(hit[0], extracted, f"{how}/{hit[1]}", hit[2])
        self.worker_calls += 1
        task = self.pool.submit((gold_mv, pred_mv))
        return PendingMath(task, extracted, how, key)

    def finish(self, pending: PendingMath) -> dict[str, Any]:
        task = pending.task
        if task.status == "ok":
            equal, method, reason = task.result
            outcome = ("correct" if equal else "wrong", method, reason)
        elif task.status == "timeout":
            outcome = ("timeout", "math-verify", f"comparison ran over the {self.config.timeout_s:g} s cap")
        else:
            outcome = ("error", "math-verify", task.error or "worker failed")
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[pending.cache_key] = outcome
        return make_verdict(outcome[0], pending.extracted, f"{pending.how}/{outcome[1]}", outcome[2])

    def pump(self, block: bool) -> None:
        if self._pool is not None:
            self._pool.pump(block)

    def next_deadline(self) -> float | None:
        """When the earliest running comparison runs out of time (monotonic), if one runs."""
        return self._pool.next_deadline() if self._pool is not None else None

    def check(self, gold: str, response: str, finish_reason: Any = None) -> dict[str, Any]:
        """One record, synchronously (tests, benchmarks, library use)."""
        started = self.start(gold, response, finish_reason)
        if isinstance(started, dict):
            return started
        while not started.done:
            self.pool.pump(True)
        return self.finish(started)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> MathChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
