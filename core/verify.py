"""``still verify``: one verdict per record, for math/short answers, multiple choice and code.

Each record gets ``verify: {verdict, score, extracted, method, reason}`` (DESIGN.md contract).
Mode per record with ``auto``: ``tests`` present -> code, ``choices`` present -> multiple choice,
otherwise math / short answer. Records come out in input order whatever the worker count.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from still.core.errors import StillError
from still.core.fields import TESTS_FALLBACKS, Fields, get_path, is_missing
from still.core.jsonl import Record
from still.core.stats import RunStats
from still.core.verify_math import MathChecker, MathConfig, PendingMath, gold_text, make_verdict
from still.core.verify_mc import check_choice

MODES = ("auto", "math", "mc", "code")
PASSING = frozenset({"correct", "pass"})


@dataclass(frozen=True)
class VerifyConfig:
    mode: str = "auto"
    fields: Fields = field(default_factory=Fields)
    answer_field: str = "answer"
    choices_field: str = "choices"
    tests_field: str | None = None  # None: the first of TESTS_FALLBACKS the record has
    finish_reason_field: str = "finish_reason"
    math: MathConfig = field(default_factory=MathConfig)
    sandbox: str = "auto"
    code_timeout_s: float = 6.0
    code_memory_mb: int = 1024
    # records this returns True for pass through unchanged, in order (still grade: already verified)
    skip: Callable[[Record], bool] | None = None


def _field(rec: Record, path: str) -> Any:
    value = get_path(rec.data, path)
    return None if is_missing(value) else value


class _CodeRunner:
    """The code checker from ``still.core.verify_code``, imported on the first code record."""

    def __init__(self, config: VerifyConfig) -> None:
        self.config = config
        self._check: Any = None
        self._code_config: Any = None

    def __call__(self, response: str, tests: Any, rec: Record) -> dict[str, Any]:
        if self._check is None:
            try:
                from still.core.verify_code import CodeConfig, check_code  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise StillError("code verification is not available in this build") from exc
            self._check = check_code
            self._code_config = CodeConfig(
                sandbox=self.config.sandbox,
                timeout_s=self.config.code_timeout_s,
                memory_mb=self.config.code_memory_mb,
            )
        result: dict[str, Any] = self._check(response, tests, rec.data, self._code_config)
        return result


def _tests(rec: Record, config: VerifyConfig) -> Any:
    """The record's code tests: ``tests_field``, else the first non-empty of TESTS_FALLBACKS."""
    if config.tests_field:
        return _field(rec, config.tests_field)
    for name in TESTS_FALLBACKS:
        value = rec.data.get(name)
        if value not in (None, "", [], {}):
            return value
    return None


def _looked_for(config: VerifyConfig) -> str:
    tests = config.tests_field or ", ".join(TESTS_FALLBACKS)
    return f"code tests in {tests}; choices in {config.choices_field}"


def _mode_of(rec: Record, config: VerifyConfig) -> str:
    if config.mode != "auto":
        return config.mode
    if _tests(rec, config) is not None:
        return "code"
    if _field(rec, config.choices_field) is not None:
        return "mc"
    return "math"


def has_no_reference(rec: Record, config: VerifyConfig) -> bool:
    """A record of the "other" category: in auto mode, no tests, no choices and no reference answer."""
    return (
        config.mode == "auto"
        and _tests(rec, config) is None
        and _field(rec, config.choices_field) is None
        and _field(rec, config.answer_field) is None
    )


def _annotate(rec: Record, result: dict[str, Any], counts: Counter[str]) -> Record:
    counts[str(result.get("verdict"))] += 1
    rec.changed()["verify"] = result
    return rec


def verify_records(records: Iterable[Record], config: VerifyConfig, stats: RunStats) -> Iterator[Record]:
    """Yield each record with ``verify`` added, in input order; verdict counts go to ``stats.extra``.

    Math comparisons that need math-verify run in killable worker processes and code runs in
    sandboxes on ``math.workers`` threads; results are released strictly in input order, so the
    output does not depend on the worker count. A record without the field its mode needs follows
    the ``--on-error`` policy.
    """
    counts: Counter[str] = Counter()
    stats.extra["verdicts"] = counts
    checker = MathChecker(config.math)
    run_code = _CodeRunner(config)
    workers = max(1, config.math.workers)
    code_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="still-code")
    window = 64 * workers
    pending: deque[tuple[Record, dict[str, Any] | PendingMath | Future[dict[str, Any]] | None]] = deque()

    def ready() -> Iterator[Record]:
        while pending:
            rec, outcome = pending[0]
            if isinstance(outcome, PendingMath):
                if not outcome.done:
                    return
                outcome = checker.finish(outcome)
            elif isinstance(outcome, Future):
                if not outcome.done():
                    return
                outcome = outcome.result()
            pending.popleft()
            yield rec if outcome is None else _annotate(rec, outcome, counts)

    def wait_for_head() -> None:
        outcome = pending[0][1]
        if isinstance(outcome, Future):
            # Keep the math pool's clock running while a code run holds the head: comparisons that
            # overrun their cap are killed on time, whatever else is waiting.
            while not outcome.done():
                deadline = checker.next_deadline()
                wait([outcome], timeout=None if deadline is None else max(0.0, deadline - time.monotonic()) + 0.01)
                checker.pump(block=False)
        elif isinstance(outcome, PendingMath) and not outcome.done:
            checker.pump(block=True)

    try:
        for rec in records:
            if config.skip is not None and config.skip(rec):
                pending.append((rec, None))
                yield from ready()
                continue
            mode = _mode_of(rec, config)
            response = config.fields.response(rec)
            finish_reason = _field(rec, config.finish_reason_field)
            outcome: dict[str, Any] | PendingMath | Future[dict[str, Any]]
            if mode == "code":
                tests = _tests(rec, config)
                if tests is None:
                    looked = config.tests_field or ", ".join(TESTS_FALLBACKS)
                    stats.reject(rec, f"no tests field ({looked}): --tests-field names another")
                    continue
                if finish_reason == "length":
                    outcome = make_verdict("truncated", None, "code", "finish_reason is length: the output was cut off")
                else:
                    outcome = code_pool.submit(run_code, response, tests, rec)
            elif mode == "mc":
                choices = _field(rec, config.choices_field)
                if choices is not None and not isinstance(choices, list):
                    stats.reject(rec, f"{config.choices_field} must be a list")
                    continue
                answer = _field(rec, config.answer_field)
                if answer is None:
                    stats.reject(rec, f"no answer field ({config.answer_field}): --answer-field names another")
                    continue
                outcome = check_choice(response, answer, choices, finish_reason)
            else:
                raw = _field(rec, config.answer_field)
                if raw is None:
                    stats.reject(
                        rec,
                        f"no answer field ({config.answer_field}): looked for {_looked_for(config)} first; "
                        "--answer-field or --tests-field names another",
                    )
                    continue
                gold = gold_text(raw)
                if gold is None:
                    outcome = make_verdict("error", None, "answer", f"reference answer {raw!r} is not usable")
                else:
                    outcome = checker.start(gold, response, finish_reason)
            pending.append((rec, outcome))
            checker.pump(block=False)
            yield from ready()
            while len(pending) >= window:
                wait_for_head()
                checker.pump(block=False)
                yield from ready()
        while pending:
            wait_for_head()
            checker.pump(block=False)
            yield from ready()
    finally:
        code_pool.shutdown(wait=True, cancel_futures=True)
        checker.close()
        stats.extra["verdicts"] = dict(sorted(counts.items()))


def all_passed(stats: RunStats) -> bool:
    verdicts = stats.extra.get("verdicts", {})
    return all(v in PASSING for v, n in verdicts.items() if n)
