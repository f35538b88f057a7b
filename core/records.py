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
