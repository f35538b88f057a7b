"""Math and short-answer checking: extraction, fast exact paths, math-verify with guards.

The pipeline for one record (docs/verify-math.md documents each rule):

1. Reasoning: the answer is read after the last ``</think>``. A response that opens ``<think>`` and
   never closes it, or whose ``finish_reason`` is ``length``, is ``truncated`` (never ``wrong``).
   R1-distill templates put the opening ``<think>`` in the prompt, so a lone ``</think>`` is normal.
2. Extraction (:mod:`still.core.answer_extract`), first hit wins: the last group of boxes, the last
   "final answer is ..." sentence, the last "Answer: ..." line, the configured fallbacks, then
   (unless ``strict``) a response that is only a number, and last math-verify's own extraction
   (its LaTeX and expression configs with their priorities) in the worker. Nothing: ``no_answer``.
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
from typing import Any

from still.core.answer_extract import (
    FALLBACKS,
    MV_REGION_CAP,
    THINK_CLOSE,
    THINK_OPEN,
    answer_line,
    answer_region,
    boxed_group,
    extract_answer,
    final_answer,
    is_prose,
    last_boxed,
    whole_answer,
)
from still.core.answer_normalise import (
    ExactNumber,
    answer_key,
    as_tuple,
    decimal_comma,
    exact_number,
    fast_compare,
    gold_text,
    has_percent,
    has_pm,
    light_normalise,
    top_level_comma,
)

__all__ = [
    "FALLBACKS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "ExactNumber",
    "MathChecker",
    "MathConfig",
    "PendingMath",
    "answer_key",
    "answer_region",
    "as_tuple",
    "compare_in_worker",
    "exact_number",
    "extract_answer",
    "fast_compare",
    "gold_answer",
    "gold_text",
    "last_boxed",
    "light_normalise",
    "make_verdict",
    "top_level_comma",
]

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
    """Options for math and short answers (docs/verify-math.md)."""

    timeout_s: float = 2.0
    workers: int = 1
    fallbacks: tuple[str, ...] = ()
    worker_memory_mb: int = 4096
    ordered_lists: bool = False  # bare "a, b, c" as an ordered tuple (MATH's string grader) instead of a set
    strict: bool = False  # anchored forms only: an unboxed, unanchored answer is no_answer


@dataclass
class PendingMath:
    """A record waiting for the worker; :meth:`MathChecker.finish` turns it into a verdict."""

    task: Any
    extracted: str | None  # None: math-verify extracts it from the region in the worker
    how: str
    cache_key: tuple[str, str] | None

    @property
    def done(self) -> bool:
        return bool(self.task.done)


_GOLD_PROSE_CAP = 120  # a longer reference is a worked solution: its answer is read like a response's
_MV_CACHE_REGION = 2_000  # regions up to this size are cached by their text


def gold_answer(gold: str) -> str:
    """The reference answer itself when the reference is a worked solution (a box or "final answer")."""
    if "\\boxed" in gold or "\\fbox" in gold:
        group = boxed_group(gold)
        if group:
            return ", ".join(group)
    if len(gold) > _GOLD_PROSE_CAP:
        return final_answer(gold) or answer_line(gold) or gold
    return gold


def _is_plain_number(key: str) -> bool:
    return exact_number(key) is not None or decimal_comma(key) is not None


class MathChecker:
    """Extraction and fast paths here; math-verify in a :class:`~still.core.procpool.KillablePool`."""

    def __init__(self, config: MathConfig) -> None:
        for name in config.fallbacks:
            if name not in FALLBACKS:
                raise ValueError(f"unknown fallback {name!r} (choose from {', '.join(FALLBACKS)})")
        self.config = config
        self._pool: Any = None
        self._cache: dict[tuple[str, str], tuple[str, str, str, str | None]] = {}
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
        gold = gold_answer(gold)
        gold_key = answer_key(gold)
        gold_mv = light_normalise(gold)
        extracted, how = extract_answer(region, self.config.fallbacks)
        if extracted is None and not self.config.strict:
            whole = whole_answer(region)
            if whole is not None and (_is_plain_number(answer_key(whole)) or answer_key(whole) == gold_key):
                extracted, how = whole, "whole"
        if extracted is None:
            if self.config.strict:
                return make_verdict(
                    "no_answer", None, "extract", "no boxed answer, final-answer phrase or Answer: line (--strict)"
                )
            tail = region[-MV_REGION_CAP:]
            return self._submit((gold_mv, "", tail), None, "math-verify", self._region_key(gold_key, tail))
        pred_key = answer_key(extracted)
        pred_mv = light_normalise(extracted)
        if self.config.ordered_lists:
            gold_mv, gold_key = as_tuple(gold_mv, gold_key)
            pred_mv, pred_key = as_tuple(pred_mv, pred_key)
        equal, method, reason = fast_compare(gold_key, pred_key, has_percent(gold), has_percent(extracted))
        if how == "boxed-list" and method != "string":
            equal = None  # "\boxed{1}, \boxed{234}" is a list, never the number 1,234
        if equal is not None:
            return make_verdict("correct" if equal else "wrong", extracted, f"{how}/{method}", reason)
        if how in ("final-answer", "answer-line") and is_prose(extracted):
            # "12 apples", "Janeth pays 220 $": math-verify reads it from the anchor on.
            payload = (gold_mv, pred_mv, "Answer: " + extracted)
            return self._submit(payload, None, how, (gold_key, "\x01" + pred_key))
        return self._submit((gold_mv, pred_mv), extracted, how, (gold_key, pred_key))

    @staticmethod
    def _region_key(gold_key: str, region: str) -> tuple[str, str] | None:
        return (gold_key, "\x00" + region) if len(region) <= _MV_CACHE_REGION else None

    def _submit(
        self, payload: tuple[str, ...], extracted: str | None, how: str, key: tuple[str, str] | None
    ) -> dict[str, Any] | PendingMath:
        hit = self._cache.get(key) if key is not None else None
        if hit is not None:
            return make_verdict(hit[0], extracted if extracted is not None else hit[3], f"{how}/{hit[1]}", hit[2])
        self.worker_calls += 1
        return PendingMath(self.pool.submit(payload), extracted, how, key)

    def finish(self, pending: PendingMath) -> dict[str, Any]:
        task = pending.task
        extracted = pending.extracted
        if task.status == "ok":
            equal, method, reason, found = task.result
            extracted = extracted if extracted is not None else found
            verdict = "no_answer" if equal is None else "correct" if equal else "wrong"
            outcome = (verdict, method, reason, extracted)
        elif task.status == "timeout":
            outcome = ("timeout", "math-verify", f"comparison ran over the {self.config.timeout_s:g} s cap", extracted)
        else:
            outcome = ("error", "math-verify", task.error or "worker failed", extracted)
        if pending.cache_key is not None:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[pending.cache_key] = outcome
        return make_verdict(outcome[0], outcome[3], f"{pending.how}/{outcome[1]}", outcome[2])

    def pump(self, block: bool) -> None:
        if self._pool is not None:
            self._pool.pump(block)

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
