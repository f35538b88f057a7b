"""Field access shared by all commands: dotted paths, chat messages, stable ids, shards.

Defaults follow the record contract (README "Records"): the query is ``query`` or the user
turns of ``messages``; the response is ``response`` or the last assistant turn of ``messages``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from still.core.errors import BadInput, UsageError
from still.core.jsonl import Record
from still.core.stats import RunStats

_MISSING = object()
QUERY_FALLBACKS = ("query", "messages", "prompt", "problem", "question")
RESPONSE_FALLBACKS = ("response", "messages")


def get_path(data: dict[str, Any], path: str) -> Any:
    """Value at a dotted path (``a.b.0.c``), or a private sentinel when absent."""
    if "." not in path:
        return data.get(path, _MISSING)
    cur: Any = data
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part, _MISSING)
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            idx = int(part)
            cur = cur[idx] if -len(cur) <= idx < len(cur) else _MISSING
        else:
            return _MISSING
        if cur is _MISSING:
            return _MISSING
    return cur


def is_missing(value: Any) -> bool:
    return value is _MISSING


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _messages_text(messages: Any, role: str, last_only: bool) -> str | None:
    if not isinstance(messages, list):
        return None
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") == role]
    if not turns:
        return None
    if last_only:
        return _message_text(turns[-1].get("content"))
    return "\n\n".join(_message_text(m.get("content")) for m in turns)


@dataclass(frozen=True)
class Fields:
    """Which fields hold the query, response and id (``None`` means the default lookup)."""

    query_path: str | None = None
    response_path: str | None = None
    id_path: str = "id"

    def _text(self, rec: Record, path: str | None, fallbacks: tuple[str, ...], role: str) -> str:
        data = rec.data
        candidates = (path,) if path else fallbacks
        for name in candidates:
            value = get_path(data, name)
            if value is _MISSING or value is None:
                continue
            if name == "messages" or (path and isinstance(value, list)):
                text = _messages_text(value, role, last_only=role == "assistant")
                if text is not None:
                    return text
                continue
            return value if isinstance(value, str) else str(value)
        wanted = path or " or ".join(fallbacks)
        kind = "query" if role == "user" else "response"
        raise BadInput(rec.source, rec.line, f"no {kind} field ({wanted})")

    def query(self, rec: Record) -> str:
        return self._text(rec, self.query_path, QUERY_FALLBACKS, "user")

    def response(self, rec: Record) -> str:
        return self._text(rec, self.response_path, RESPONSE_FALLBACKS, "assistant")

    def record_id(self, rec: Record) -> str:
        """The record's id, or a stable id derived from its normalised query."""
        value = get_path(rec.data, self.id_path)
        if value is not _MISSING and value is not None:
            return value if isinstance(value, str) else str(value)
        return derive_id(self.query(rec))


def id_normalise(text: str) -> str:
    """The fixed normalisation behind derived ids: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def derive_id(query: str) -> str:
    return "q" + xxhash.xxh3_64_hexdigest(id_normalise(query).encode("utf-8"))


@dataclass(frozen=True)
class Shard:
    """``--shard i/n``: keep the records whose id hash falls in part i of n (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise UsageError(f"--shard {text}: need 0 <= i < n")
        return cls(i, n)

    @property
    def active(self) -> bool:
        return self.count > 1

    def owns(self, record_id: str) -> bool:
        return xxhash.xxh3_64_intdigest(record_id.encode("utf-8")) % self.count == self.index


def shard_filter(records: Iterator[Record], shard: Shard, fields: Fields, stats: RunStats) -> Iterator[Record]:
    """Pass through only this shard's records; the others, counted as dropped
    ("other shard"), belong to sibling processes. Without a shard the records pass untouched
    (no extra generator step per record)."""
    if not shard.active:
        return records
    return _owned(records, shard, fields, stats)


def _owned(records: Iterator[Record], shard: Shard, fields: Fields, stats: RunStats) -> Iterator[Record]:
    for rec in records:
        if shard.owns(fields.record_id(rec)):
            yield rec
        else:
            stats.drop("other shard")
