"""The worker side of math checking: math-verify plus guards, in a killable process.

:func:`compare_in_worker` runs in :class:`~still.core.procpool.KillablePool` workers forked from a
server that imported :mod:`still.core.mathwarm`; the parent (:mod:`still.core.verify_math`) kills
a worker that runs over its cap. It parses both answers (or first extracts the answer from a
response region the way math-verify does), skips math-verify's slow ``simplify`` for clearly
different values, calls ``verify`` at the precision the decimals show, and vetoes math-verify's
known false positives (docs/verify-math.md "Guards").
"""

from __future__ import annotations

import logging
import re
from typing import Any

from still.core.answer_normalise import answer_key, fast_compare, has_percent, has_pm

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


_SYMBOL_RE = re.compile(r"\s*\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*")


def _assigns_last(text: str) -> bool:
    """A chain ``... = x = 0`` whose last step assigns a value: the value is the answer."""
    parts = _EQ_RE.split(text)
    return len(parts) >= 3 and bool(_SYMBOL_RE.fullmatch(parts[-2]))


def _has_float(parsed: list[Any]) -> bool:
    from sympy import Float

    expr = _first_expr(parsed)
    return expr is not None and bool(expr.atoms(Float))


def _relations_set(expr: Any) -> bool:
    """A set or tuple of equations (``p=-1 \\text{ and } p=\\frac{15}{8}``)."""
    from sympy import FiniteSet, Tuple

    return isinstance(expr, (FiniteSet, Tuple)) and len(expr) > 0 and all(_is_relation(a) for a in expr.args)


def _numeric_value(expr: Any) -> Any:
    from sympy import Expr

    if isinstance(expr, Expr) and not expr.free_symbols and expr.is_number:
        return expr
    return None


def _float_digits(value: Any) -> tuple[int, int] | None:
    """(decimals, significant digits) of a decimal as written (its shortest round-trip form)."""
    try:
        text = repr(abs(float(value)))
    except (TypeError, ValueError, OverflowError):
        return None
    if "e" in text or "inf" in text or "nan" in text:
        return None
    whole, _, frac = text.partition(".")
    frac = "" if frac == "0" else frac
    digits = (whole + frac).lstrip("0")
    return len(frac), max(1, len(digits))


def _written(value: Any) -> Any:
    """A decimal as written, exactly (0.0000672, not its binary float)."""
    from sympy import Rational

    return Rational(repr(float(value)))


def _rounding_veto(exact: Any, decimal: Any, written: Any) -> tuple[str, str] | None:
    """The "correctly rounded" rule for one exact value against one decimal, or None when it holds.

    The decimal must be the exact value rounded to the digits it shows (``0.33`` for 1/3,
    ``1.41421`` for sqrt 2; not ``0.3333334``), with at least 2 significant digits for a rational
    value and 3 for an irrational one (``0.58`` does not stand for sqrt(3)/3). A decimal equal to
    the exact value (``0.6`` for 3/5) always holds.
    """
    from sympy import Abs, Float, Rational

    shape = _float_digits(written)  # the decimal as written (1.2346 of 1.2346 \\times 10^5)
    if shape is None:
        return None
    decimals, significant = shape
    try:
        if decimal is written:  # a bare decimal: its exact value as written, not the binary float
            value: Any = Rational(repr(float(written)))
        else:
            value = decimal.evalf(40)
        diff = Abs((exact.evalf(40) - value).evalf(40))
        if exact.is_Rational and value.is_Rational and exact == value:
            return None
        tolerance = Float(5, 40) * Float(10, 40) ** (-decimals - 1) * Float("1.000000001", 40)
        if bool(diff > tolerance):
            return "guard:rounding", "the decimal is not the exact value rounded to its digits"
        if significant < (2 if exact.is_Rational else 3):
            return "guard:rounding", "too few digits to stand for the exact value"
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return None
    return None


def _leaf_pairs(g_expr: Any, p_expr: Any) -> list[tuple[Any, Any]]:
    """Numbers of the two answers side by side: the answers themselves, or the elements of
    tuples, intervals and matrices of the same shape, or of finite sets sorted by value."""
    from sympy import FiniteSet, Interval, MatrixBase, Tuple

    if isinstance(g_expr, MatrixBase) and isinstance(p_expr, MatrixBase):
        return list(zip(g_expr, p_expr)) if g_expr.shape == p_expr.shape else []
    if isinstance(g_expr, Interval) and isinstance(p_expr, Interval):
        return [(g_expr.start, p_expr.start), (g_expr.end, p_expr.end)]
    if isinstance(g_expr, (Tuple, FiniteSet)) and isinstance(p_expr, (Tuple, FiniteSet)):
        g_args = list(getattr(g_expr, "_unsorted_args", None) or g_expr.args)
        p_args = list(getattr(p_expr, "_unsorted_args", None) or p_expr.args)
        if len(g_args) != len(p_args):
            return []
        if isinstance(g_expr, FiniteSet) or isinstance(p_expr, FiniteSet):
            try:
                g_args.sort(key=lambda x: float(x.evalf()))
                p_args.sort(key=lambda x: float(x.evalf()))
            except (TypeError, ValueError):
                return []
        return list(zip(g_args, p_args))
    return [(g_expr, p_expr)]


def _guard(gold: str, pred: str, g_parsed: list[Any], p_parsed: list[Any]) -> tuple[str, str] | None:
    """A (name, reason) veto of a math-verify "equal", or None when the verdict stands."""
    from sympy import Abs, Float

    g_expr = _first_expr(g_parsed)
    p_expr = _first_expr(p_parsed)
    for text, expr in ((gold, g_expr), (pred, p_expr)):
        if _EQ_RE.search(text) and expr is not None and not _is_relation(expr):
            if "," not in text and "\\in" not in text and not _relations_set(expr) and not _assigns_last(text):
                return "guard:equation", "an equation was read only in part"
    if has_pm(gold) != has_pm(pred):
        from sympy import FiniteSet, Tuple

        other = p_expr if has_pm(gold) else g_expr
        if not isinstance(other, (FiniteSet, Tuple)) or len(other) < 2:
            return "guard:pm", "a ± answer stands for two values, the other side for one"
    for g_leaf, p_leaf in _leaf_pairs(g_expr, p_expr):
        g_num = _numeric_value(g_leaf)
        p_num = _numeric_value(p_leaf)
        if g_num is None or p_num is None:
            continue
        g_float = bool(g_num.atoms(Float))
        p_float = bool(p_num.atoms(Float))
        if g_float != p_float:
            exact, decimal = (p_num, g_num) if g_float else (g_num, p_num)
            floats = sorted(decimal.atoms(Float), key=lambda f: _float_digits(f) or (0, 0))
            veto = _rounding_veto(exact, decimal, floats[-1])
            if veto is not None:
                return veto
            continue
        if g_float:
            if isinstance(g_num, Float) and isinstance(p_num, Float) and _written(g_num) != _written(p_num):
                return "guard:decimals", "two different decimals (math-verify rounds both to 6 places)"
            continue
        try:
            gv = g_num.evalf(40)
            pv = p_num.evalf(40)
            diff = Abs((gv - pv).evalf(40))
            if bool(diff > max(Abs(gv), Abs(pv)) * Float("1e-25", 40)):
                return "guard:precision", "values differ at 40-digit precision"
        except (TypeError, ValueError, ArithmeticError, AttributeError):
            continue
    return None


def _float_rounding(gold: str, pred: str) -> int:
    """math-verify's ``float_rounding`` for this pair: the most decimals either side shows, at most 6.

    math-verify rounds both sides to 6 places, so ``0.33`` is not 1/3 and ``1.41421`` is not
    sqrt 2 there; the rounding guard then checks each decimal against its own digits.
    """
    decimals = [len(d) for d in _DEC_LITERAL_RE.findall(gold + " " + pred)]
    return min(6, max(decimals)) if decimals else 6


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


def _mv_extract(region: str) -> list[Any]:
    """math-verify's own extraction on a response region: its default LaTeX and expression configs
    and their priorities (final answer 0, boxed and "final answer ... is" 50, answer 100/200,
    anything else 300), the rightmost match first."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return list(
        parse(
            region,
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=None,  # no SIGALRM: time is capped by killing the worker
        )
    )


WorkerResult = tuple[bool | None, str, str, str | None]


def compare_in_worker(payload: tuple[str, ...]) -> WorkerResult:
    """Worker handler: (equal, method, reason, extracted) for a reference and an answer.

    ``(gold, pred)`` compares two extracted answers; ``(gold, "", region)`` first extracts the
    answer from the response region the way math-verify does (``equal`` is None when it finds none);
    ``(gold, pred, sentence)`` reads an anchored answer that is prose the same way, and parses
    ``pred`` whole when math-verify finds nothing in it.
    """
    _quiet_logs()
    from math_verify import verify

    gold, pred = payload[0], payload[1]
    extracted: str | None = None
    g_parsed = _mv_parse(gold)
    p_parsed = _mv_extract(payload[2]) if len(payload) > 2 else []
    if len(payload) > 2 and not p_parsed and not pred:
        return None, "math-verify", "no answer that math-verify can read", None
    if p_parsed:
        last = p_parsed[-1]
        extracted = pred = last if isinstance(last, str) else str(p_parsed[0])
        if pred.rstrip().endswith(".") and _has_float(p_parsed):  # "2/3." at a sentence end reads as 2/3.0
            bare = pred.rstrip().rstrip(".").rstrip()
            reparsed = _mv_parse(bare)
            if reparsed and not _has_float(reparsed):
                extracted = pred = bare
                p_parsed = reparsed
        # What math-verify extracted gets the parent's exact fast paths too (0.0000672 is not 0.0000673).
        equal, method, reason = fast_compare(answer_key(gold), answer_key(pred), has_percent(gold), has_percent(pred))
        if equal is not None:
            return equal, method, reason, extracted
    else:
        p_parsed = _mv_parse(pred)
        extracted = pred if len(payload) > 2 else None
    if not g_parsed:
        return False, "math-verify", "reference answer could not be parsed", extracted
    if not p_parsed:
        return False, "math-verify", "answer could not be parsed", extracted
    if "%" not in gold + pred and _clearly_different(_first_expr(g_parsed), _first_expr(p_parsed)):
        return False, "numeric-probe", "different values at a probe point", extracted
    equal = verify(g_parsed, p_parsed, float_rounding=_float_rounding(gold, pred), timeout_seconds=None)
    if not equal:
        return False, "math-verify", "not equivalent", extracted
    veto = _guard(gold, pred, g_parsed, p_parsed)
    if veto is not None:
        return False, veto[0], veto[1], extracted
    return True, "math-verify", "equivalent", extracted
