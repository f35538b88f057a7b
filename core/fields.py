"""Field access shared by all commands: dotted paths, chat messages, stable ids, shards.

Defaults follow the record contract (README "Records"): the query is ``query``, the user turns
of ``messages`` (OpenAI ``role``/``content``) or ``conversations`` (ShareGPT ``from``/``value``),
``prompt``, ``problem`` or ``question``; the response is ``response``, the last assistant turn of
``messages``/``conversations``, or MATH's ``solution`` when there is no other.
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
QUERY_FALLBACKS = ("query", "messages", "conversations", "prompt", "problem", "question")
RESPONSE_FALLBACKS = ("response", "messages", "conversations", "solution")
# where `verify` finds code tests (KodCode: test, APPS/TACO: input_output)
TESTS_FALLBACKS = ("tests", "test", "test_code", "input_output")
# fields read as a list of chat turns by default
CHAT_FIELDS = frozenset({"messages", "conversations"})
# ShareGPT speaker names (``from``) and OpenAI roles, as the role they play
_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}
# the option (and environment variable) that names each field, for error messages
FIELD_OPTIONS = {"query": "--query-field", "response": "--response-field"}


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


def _turn_role(turn: dict[str, Any]) -> Any:
    role = turn.get("role")
    if role is None:
        role = turn.get("from")
    return _ROLES.get(role, role) if isinstance(role, str) else role


def _turn_content(turn: dict[str, Any]) -> Any:
    content = turn.get("content")
    return turn.get("value") if content is None else content


def _messages_text(messages: Any, role: str, last_only: bool) -> str | None:
    """The ``role`` turns of an OpenAI (role/content) or ShareGPT (from/value) conversation."""
    if not isinstance(messages, list):
        return None
    turns = [m for m in messages if isinstance(m, dict) and _turn_role(m) == role]
    if not turns:
        return None
    if last_only:
        return _message_text(_turn_content(turns[-1]))
    return "\n\n".join(_message_text(_turn_content(m)) for m in turns)


def missing_field_message(kind: str, data: dict[str, Any], path: str | None, fallbacks: tuple[str, ...]) -> str:
    """``no KIND field (...)``: what was looked for, the keys the record has, and the flag to use."""
    keys = list(data)
    shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} keys)" if len(keys) > 12 else "")
    option = FIELD_OPTIONS.get(kind, f"--{kind}-field")
    env = "STILL_" + option[2:].replace("-", "_").upper()
    looked = path if path else ", ".join(fallbacks)
    texts = [k for k, v in data.items() if isinstance(v, str) and k not in ("id", path)]
    example = f", e.g. {option} {texts[0]}" if texts else ""
    return (
        f"no {kind} field (looked for {looked}): the record has {shown or 'no keys'}; "
        f"name the field with {option} PATH (or {env}){example}"
    )


@dataclass(frozen=True)
class Fields:
    """Which fields hold the query, response and id (``None`` means the default lookup)."""

    query_path: str | None = None
    response_path: str | None = None
    id_path: str = "id"

    def _text(self, rec: Record, path: str | None, fallbacks: tuple[str, ...], role: str) -> str:
        text = self._find(rec, path, fallbacks, role)
        if text is not None:
            return text
        kind = "query" if role == "user" else "response"
        raise BadInput(rec.source, rec.line, missing_field_message(kind, rec.data, path, fallbacks))

    def _find(self, rec: Record, path: str | None, fallbacks: tuple[str, ...], role: str) -> str | None:
        data = rec.data
        candidates = (path,) if path else fallbacks
        for name in candidates:
            value = get_path(data, name)
            if value is _MISSING or value is None:
                continue
            if name in CHAT_FIELDS or (path and isinstance(value, list)):
                text = _messages_text(value, role, last_only=role == "assistant")
                if text is not None:
                    return text
                continue
            return value if isinstance(value, str) else str(value)
        return None

    def query(self, rec: Record) -> str:
        return self._text(rec, self.query_path, QUERY_FALLBACKS, "user")

    def response(self, rec: Record) -> str:
        return self._text(rec, self.response_path, RESPONSE_FALLBACKS, "assistant")

    def response_or_none(self, rec: Record) -> str | None:
        """The response, or None without one (cheap: no error message is built)."""
        return self._find(rec, self.response_path, RESPONSE_FALLBACKS, "assistant")

    def record_id(self, rec: Record) -> str:
        """The record's id, or a stable id derived from its normalised query."""
        value = get_path(rec.data, self.id_path)
        if value is not _MISSING and value is not None:
            return value if isinstance(value, str) else str(value)
        return derive_id(self.query(rec))


# how many leading records check_query_ids looks at
QUERY_ID_CHECK_RECORDS = 10_000


def check_query_ids(
    records: Iterator[Record], fields: Fields, stats: RunStats, purpose: str, window: int = QUERY_ID_CHECK_RECORDS
) -> Iterator[Record]:
    """Pass records through; warn when the query id field looks like a row id.

    ``id`` is often unique per row (one id per response) while the same query appears on several
    rows: grouping "per query" by it then groups nothing. The first ``window`` records are
    checked: every row has its own id, and at least one query repeats.
    """
    ids: set[str] = set()
    queries: set[str] = set()
    rows = 0
    for rec in records:
        yield rec
        value = get_path(rec.data, fields.id_path) if fields.id_path else _MISSING
        if value is _MISSING or value is None:
            break  # no id field: ids derive from the query, which is what grouping needs
        try:
            query = derive_id(fields.query(rec))
        except BadInput:
            break  # the command itself reports a record without a query
        rows += 1
        ids.add(str(value))
        queries.add(query)
        if rows >= window:
            break
    if rows and len(ids) == rows and len(queries) < rows:
        stats.warn(
            f"{purpose} groups records by --query-id-field {fields.id_path!r}, but its values are unique "
            f"per row while queries repeat ({rows} rows, {len(queries)} distinct queries among the first "
            f"{rows}): give --query-id-field '' to group by the normalised query (or name the field "
            "that identifies the query)"
        )
    yield from records


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
