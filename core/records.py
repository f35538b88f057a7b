"""The record every command streams: one input line's object, raw bytes and origin.

Below both :mod:`still.core.jsonl` (which reads and writes records) and :mod:`still.core.stats`
(which accounts for them), so neither imports the other for it.
"""

from __future__ import annotations

from typing import Any

import orjson


class Record:
    """One input line: its parsed object, its raw bytes (until changed) and where it came from."""

    __slots__ = ("data", "raw", "source", "line")

    def __init__(self, data: dict[str, Any], raw: bytes | None, source: str, line: int) -> None:
        self.data = data
        self.raw = raw
        self.source = source
        self.line = line

    def changed(self) -> dict[str, Any]:
        """Return the object for editing; the record is re-serialised when written."""
        self.raw = None
        return self.data

    def to_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return orjson.dumps(self.data) + b"\n"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


class LazyRecord(Record):
    """A line read but not yet parsed: its object is parsed on first use.

    For commands whose own workers parse and check every line (``still dedup --workers``), so the
    reading process does not parse each line a second time. Whoever reads such records must check
    each line with :func:`still.core.jsonl.parse_object` before using ``data``.
    """

    __slots__ = ("offset",)

    def __init__(self, raw: bytes, source: str, line: int, offset: int = -1) -> None:
        self.raw = raw
        self.source = source
        self.line = line
        self.offset = offset  # where the line starts in ``source``, a plain file (-1: not known)

    @property
    def data(self) -> dict[str, Any]:
        try:
            return _DATA.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:
            assert self.raw is not None
            value = orjson.loads(self.raw)
            _DATA.__set__(self, value)
            return value  # type: ignore[no-any-return]

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        _DATA.__set__(self, value)

    def changed(self) -> dict[str, Any]:
        data = self.data  # parsed before the raw bytes it is parsed from are let go
        self.raw = None
        return data


_DATA: Any = Record.__dict__["data"]  # the slot LazyRecord's property stores the parsed object in
