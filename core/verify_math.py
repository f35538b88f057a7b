"""Math and short-answer checking: extraction, fast exact paths, then math-verify with guards.

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
   then, in a killable worker process (:mod:`still.core.math_worker` in :mod:`still.core.procpool`):
   c. math-verify ``parse`` + ``verify`` on the answers wrapped in ``\\boxed{}`` (so bare text such
      as ``pi/2`` is read as LaTeX, and a partial match such as the ``0`` of ``...=0`` cannot stand
      in for the whole answer);
   d. guards that veto math-verify's known false positives: equations that did not parse as
      equations, ``\\pm`` against a single value, numeric values that differ at 40-digit precision
      (``1/2004!`` vs ``1/2006!``, ``1/2^{99}`` vs ``1/2^{98}``), and decimals that are not the
      exact value correctly rounded to the digits given (2 significant digits at least, 3 for an
      irrational value).
"""

from __future__ import annotations

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
                "still.core.math_worker:compare_in_worker",
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
