"""A crash-safe journal of finished outputs, keyed, next to the output file.

``still generate -o FILE`` appends every finished response to ``FILE.journal`` as one line the
moment it is done; a run killed at any point (even ``kill -9``) leaves whole lines plus at most
one partial last line, which the next ``--resume`` cuts off. The first line records what the run
was (models, sampling, seed, ...) so a resume with different settings is refused instead of
mixing two runs. Lines are written with one ``write`` each and not fsynced: they survive the
process, not a power cut.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from still.core.errors import StillError, UsageError

JOURNAL_SUFFIX = ".journal"
_FORMAT = 1


def journal_path(output: str) -> str:
    return output + JOURNAL_SUFFIX


def output_journal(
    output: str | None, fingerprint: dict[str, Any], key_of: Callable[[bytes], Hashable], *, resume: bool
) -> Journal | None:
    """The journal of a run writing ``-o output``: None for standard output or a device/FIFO
    (nothing to resume into; ``resume`` then is a usage error)."""
    if output is None or output == "-" or (os.path.exists(output) and not os.path.isfile(output)):
        if resume:
            raise UsageError("--resume needs -o FILE (a regular file): the journal lives next to it")
        return None
    return Journal(journal_path(output), fingerprint, key_of, resume=resume)


class Journal:
    """Append-only keyed lines; ``get`` reads a line back by key (offsets kept in memory)."""

    def __init__(
        self,
        path: str,
        fingerprint: dict[str, Any],
        key_of: Callable[[bytes], Hashable],
        *,
        resume: bool,
    ) -> None:
        self.path = path
        self.index: dict[Hashable, tuple[int, int]] = {}
        header = orjson.dumps({"still_journal": _FORMAT, "run": fingerprint}) + b"\n"
        if os.path.exists(path):
            if not resume:
                raise UsageError(
                    f"{path} holds the responses of an interrupted run: add --resume to continue it, "
                    "or delete it to start again"
                )
            self._load(header, key_of)
        else:
            with open(path, "wb") as out:
                out.write(header)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND)
        self.resumed = len(self.index)

    def _load(self, header: bytes, key_of: Callable[[bytes], Hashable]) -> None:
        with open(self.path, "rb") as src:
            first = src.readline()
            if first != header:
                raise UsageError(
                    f"{self.path} was written by a run with other settings (models, sampling, seed, prompt "
                    "or shard): resume with the same options, or delete it to start again"
                )
            offset = len(first)
            while line := src.readline():
                if not line.endswith(b"\n"):
                    break  # the partial last line of a killed run
                try:
                    key = key_of(line)
                except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
                    raise StillError(f"{self.path}: unreadable line at byte {offset}: {exc}") from exc
                self.index[key] = (offset, len(line))
                offset += len(line)
        os.truncate(self.path, offset)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.index

    def get(self, key: Hashable) -> bytes:
        offset, length = self.index[key]
        return os.pread(self._fd, length, offset)

    def append(self, key: Hashable, line: bytes) -> None:
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self.index[key] = (offset, len(line))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        """The run is complete and its output committed: the journal is no longer needed."""
        self.close()
        os.unlink(self.path)
