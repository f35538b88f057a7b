"""Streaming JSONL input and output shared by every command.

Input: one or more files or ``-`` (stdin), plain or gzip (detected by magic bytes), one JSON
object per line. Every problem is located as ``source:line: what is wrong`` and handled by the
bad-record policy: ``fail`` (raise :class:`BadInput`), ``skip`` (count it) or ``quarantine``
(count it and copy the raw line to a file).

Records keep their raw bytes until a command changes them, so unknown fields, number spellings
and key order pass through byte for byte.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import orjson

from still.core.errors import BadInput, UsageError
from still.core.records import LazyRecord
from still.core.records import Record as Record  # re-exported: where commands have always imported it
from still.core.stats import RunStats

DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
# -o FILE.gz: level 1 spends ~5x less time compressing than Python's default 9, for files ~10%
# larger, which keeps compression from being the slowest stage (bench/gzip_output.py measures it).
DEFAULT_GZIP_LEVEL = 1
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ErrorPolicy:
    """What to do with a malformed line: fail, skip, or quarantine to ``path``."""

    mode: str = "fail"
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> ErrorPolicy:
        if text in ("fail", "skip"):
            return cls(text)
        if text.startswith("quarantine="):
            path = text.split("=", 1)[1]
            if not path:
                raise UsageError("--on-error quarantine=FILE needs a file name")
            return cls("quarantine", path)
        raise UsageError(f"--on-error must be fail, skip or quarantine=FILE, not {text!r}")


# Reading buffer: with ~4 KB lines an 8 KiB buffer makes readline take its slow path (joining
# pieces, a syscall every other line) about every other line; 64 KiB keeps most lines a single
# copy. Larger buffers measured slower (more system time: they come from mmap and leave the
# CPU cache before readline copies the line out).
READ_BUFFER_BYTES = 1 << 16


class _ReadOnce(io.RawIOBase):
    """A raw view of an already buffered stream that reads at most once per call (``readinto1``),
    so a large buffer on top of it never waits for more than the producer has written."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return int(self._stream.readinto1(buffer))


def _open_source(name: str) -> tuple[str, BinaryIO, bool]:
    """The source's label, its stream, and whether it is a plain file (a line's offset in the
    stream is its offset in the file)."""
    if name == "-":
        stdin: Any = sys.stdin.buffer
        label = "<stdin>"
        # keep what stdin's own buffer may already hold: read through it, one read at a time
        raw: Any = _ReadOnce(stdin) if hasattr(stdin, "readinto1") else stdin
        peekable: Any = io.BufferedReader(raw, READ_BUFFER_BYTES)
    else:
        try:
            peekable = open(name, "rb", buffering=READ_BUFFER_BYTES)  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from exc
        label = name
    if peekable.peek(2)[:2] == _GZIP_MAGIC:
        return label, gzip.GzipFile(fileobj=peekable, mode="rb"), False  # type: ignore[return-value]
    # a named pipe or /dev/fd/N is no plain file, though it has a name
    return label, peekable, name != "-" and stat.S_ISREG(os.fstat(peekable.fileno()).st_mode)


def _describe_json_error(exc: orjson.JSONDecodeError, raw: bytes) -> str:
    msg = str(exc)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        return "invalid UTF-8"
    col = getattr(exc, "colno", None)
    where = f" (col {col})" if col else ""
    first = msg.split(":", 1)[0]
    return f"invalid JSON{where}: {first}"


def parse_object(raw: bytes) -> dict[str, Any] | str:
    """The JSON object on a line, or what is wrong with it (the reader's own messages)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return "empty line" if not raw.strip() else _describe_json_error(exc, raw)
    if type(data) is not dict:
        return f"expected a JSON object, got {type(data).__name__.replace('NoneType', 'null')}"
    return data


def _error_kind(message: str) -> str:
    """The counted reason of a rejected line: its message without positions or details."""
    return message.split(" (", 1)[0].split(":", 1)[0]


class JsonlReader:
    """Iterate :class:`Record` objects from sources, applying the bad-record policy."""

    def __init__(
        self,
        sources: Sequence[str],
        stats: RunStats,
        policy: ErrorPolicy | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        parse: bool = True,
    ) -> None:
        """``parse=False`` yields :class:`LazyRecord` lines, unparsed and unchecked: for a consumer
        that parses and checks every line itself (with :func:`parse_object`)."""
        self.sources = list(sources) or ["-"]
        self.parse = parse
        self.stats = stats
        self.policy = policy or ErrorPolicy()
        self.max_line_bytes = max_line_bytes
        self._quarantine: IO[bytes] | None = None
        self._quarantine_used = False
        self._input_ended = False
        stats.on_bad = self._bad

    def _bad(self, source: str, line: int, message: str, raw: bytes) -> None:
        if self.policy.mode == "fail":
            raise BadInput(source, line, message)
        self.stats.error(_error_kind(message))
        if self.policy.mode == "quarantine":
            if self._quarantine is None:
                assert self.policy.path is not None
                # a fresh run replaces an old quarantine file; a reopen (after the input ended) appends
                mode = "ab" if self._quarantine_used else "wb"
                self._quarantine = open(self.policy.path, mode)  # noqa: SIM115 - closed in __iter__/close
                self._quarantine_used = True
            self._quarantine.write(raw if raw.endswith(b"\n") else raw + b"\n")
            if self._input_ended:  # a record rejected after the input ended (read ahead): nobody closes it later
                self.close()

    def __iter__(self) -> Iterator[Record]:
        # One flat loop per line (readline, parse, check, Record): this is every command's hot path.
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        stats = self.stats
        limit = self.max_line_bytes
        lazy = not self.parse
        try:
            for name in self.sources:
                source, stream, plain = _open_source(name)
                readline = stream.readline
                # lazy lines of a plain file carry their offset (a worker may read them there)
                offset = 0 if lazy and plain else -1
                try:
                    lineno = 0
                    try:
                        while raw := readline(limit + 1):
                            lineno += 1
                            stats.read += 1
                            if raw[-1] != 10 and len(raw) > limit:
                                # too long: consume the rest of the line without holding it in memory
                                head = raw[:200]
                                while raw and not raw.endswith(b"\n"):
                                    raw = readline(1 << 20)
                                limit_mb = limit / (1024 * 1024)
                                self._bad(source, lineno, f"line longer than {limit_mb:g} MiB", head)
                                offset = -1  # not counted through: the lines after it carry none
                                continue
                            if lazy:
                                line_offset = offset
                                if offset >= 0:
                                    offset += len(raw)
                                yield LazyRecord(raw if raw[-1] == 10 else raw + b"\n", source, lineno, line_offset)
                                continue
                            if raw[-1] != 10:
                                raw += b"\n"
                            try:
                                data = loads(raw)
                            except decode_error:
                                data = None
                            if type(data) is not dict:
                                problem = parse_object(raw)
                                assert isinstance(problem, str)
                                self._bad(source, lineno, problem, raw)
                                continue
                            yield Record(data, raw, source, lineno)
                    except (OSError, EOFError, gzip.BadGzipFile) as exc:
                        if isinstance(exc, BrokenPipeError):
                            raise
                        raise BadInput(source, lineno + 1, f"cannot read: {exc}") from exc
                finally:
                    if name != "-":
                        stream.close()
        finally:
            self._input_ended = True
            self.close()

    def close(self) -> None:
        if self._quarantine is not None:
            self._quarantine.close()
            self._quarantine = None


def read_records(
    sources: Sequence[str],
    stats: RunStats,
    policy: ErrorPolicy | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    parse: bool = True,
) -> Iterator[Record]:
    return iter(JsonlReader(sources, stats, policy, max_line_bytes, parse))


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir`` would give a new file (0o666) or directory (0o777) under the
    process umask; ``mkstemp``/``mkdtemp`` use 0o600/0o700 whatever the umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


class AtomicOutput:
    """A binary sink: stdout, or a file that appears only when the run completes.

    The file gets the mode a plain ``open()`` would (the umask's), like ``cp`` and ``sort -o``.
    ``.gz`` paths are compressed at ``gzip_level`` (1 fastest .. 9 smallest).
    """

    def __init__(self, path: str | None, gzip_level: int = DEFAULT_GZIP_LEVEL) -> None:
        self.path = None if path in (None, "-") else path
        self.gzip_level = gzip_level
        self._tmp: str | None = None
        self._direct = False
        self._raw: BinaryIO
        self.stream: BinaryIO

    def __enter__(self) -> BinaryIO:
        if self.path is None:
            self.stream = sys.stdout.buffer
            return self.stream
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            # a device, FIFO or socket (-o /dev/null, -o >(gzip ...)): write to it directly;
            # renaming a temporary file onto it would replace the device node itself
            self.stream = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
            self._raw = self.stream
            self._direct = True
            return self.stream
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=".still-", suffix=".part", dir=directory)
        except OSError as exc:
            raise UsageError(f"cannot write {self.path}: {exc.strerror} ({directory})") from exc
        os.fchmod(fd, umask_mode())
        raw: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)
        if self.path.endswith(".gz"):
            self.stream = gzip.GzipFile(  # type: ignore[assignment]
                fileobj=raw, mode="wb", mtime=0, compresslevel=self.gzip_level
            )
            self._raw = raw
        else:
            self.stream = raw
            self._raw = raw
        return self.stream

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.path is None:
            self.stream.flush()
            return
        if self._direct:
            self.stream.close()
            return
        assert self._tmp is not None
        try:
            self.stream.close()
            if self._raw is not self.stream:
                self._raw.close()
        finally:
            if exc_type is None:
                os.replace(self._tmp, self.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(self._tmp)


def write_records(records: Iterable[Record], sink: BinaryIO, stats: RunStats) -> None:
    """Write records, counting them; one write call per record keeps memory flat."""
    write = sink.write
    for rec in records:
        write(rec.to_bytes())
        stats.written += 1
