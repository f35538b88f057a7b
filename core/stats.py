"""Run accounting: every record read is written, dropped with a reason, or counted as an error."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from still.core.errors import BadInput, StillError
from still.core.records import Record


@dataclass
class RunStats:
    command: str
    read: int = 0
    written: int = 0
    created: int = 0  # records a command makes rather than reads (e.g. eval's summary lines)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    # things the user should know about the run (printed before the summary, kept in --stats)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    # set by the reader: applies the --on-error policy to (source, line, message, raw line)
    on_bad: Callable[[str, int, str, bytes], None] | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] += n

    def reject(self, rec: Record, message: str) -> None:
        """A well-formed line a command cannot use (e.g. a missing field): the --on-error policy
        decides (fail raises BadInput; skip/quarantine count it as an error)."""
        if self.on_bad is None:
            raise BadInput(rec.source, rec.line, message)
        self.on_bad(rec.source, rec.line, message, rec.raw or b"")

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def check_balance(self) -> None:
        """Fail loudly if a record went missing: read == written + dropped + errors."""
        accounted = self.written + self.n_dropped + self.n_errors
        if accounted != self.read + self.created:
            raise StillError(
                f"internal accounting error: read {self.read} records but wrote {self.written}, "
                f"dropped {self.n_dropped} and rejected {self.n_errors}; please report this bug"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "read": self.read,
            "written": self.written,
            "dropped": dict(sorted(self.dropped.items())),
            "errors": dict(sorted(self.errors.items())),
            "seconds": round(time.perf_counter() - self.started, 3),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            **self.extra,
        }

    def summary(self) -> str:
        def counts(c: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))

        parts = [f"read {self.read}"] + ([f"made {self.created}"] if self.created else []) + [f"written {self.written}"]
        dropped = f"dropped {self.n_dropped}"
        if self.dropped:
            dropped += f" ({counts(self.dropped)})"
        parts.append(dropped)
        errors = f"errors {self.n_errors}"
        if self.errors:
            errors += f" ({counts(self.errors)})"
        parts.append(errors)
        secs = time.perf_counter() - self.started
        return f"still {self.command}: " + ", ".join(parts) + f" in {secs:.2f} s"
