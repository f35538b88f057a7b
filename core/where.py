"""Numeric record filters for ``still sample --where``: ``PATH OP NUMBER``, parsed without eval.

A condition is a dotted field path, one of ``< <= > >= == !=``, and a number, e.g.
``score.ppl<20`` or ``score.rep_ngram_frac <= 0.1``. Several ``--where`` options must all hold.
A record whose field is missing, null or not a number fails the condition (it is dropped with
its own reason, so nothing goes silently).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from still.core.errors import UsageError
from still.core.fields import get_path, is_missing
from still.core.records import Record
from still.core.stats import RunStats

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?[\w.+-]+)\s*$")


@dataclass(frozen=True)
class Condition:
    path: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.path}{self.op}{self.value:g}"

    def holds(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        return _OPS[self.op](float(value), self.value)


def parse_condition(text: str) -> Condition:
    m = _CONDITION.match(text)
    if m is None:
        raise UsageError(
            f"--where {text!r}: expected PATH OP NUMBER with OP one of < <= > >= == != (e.g. 'score.ppl<20')"
        )
    try:
        value = float(m.group(3))
    except ValueError:
        raise UsageError(f"--where {text!r}: {m.group(3)!r} is not a number") from None
    return Condition(m.group(1), m.group(2), value)


def filter_where(records: Iterable[Record], conditions: list[Condition], stats: RunStats) -> Iterator[Record]:
    """The records for which every condition holds; the others dropped as ``where PATH OP X``
    (or ``where: no PATH`` when the field is missing or not a number)."""
    for rec in records:
        for cond in conditions:
            value = get_path(rec.data, cond.path)
            if not cond.holds(value):
                number = not is_missing(value) and isinstance(value, (int, float)) and not isinstance(value, bool)
                stats.drop(f"where {cond}" if number else f"where: no number at {cond.path}")
                break
        else:
            yield rec
