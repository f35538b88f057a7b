"""Errors with documented exit codes.

Exit codes (README "Exit codes"): 0 ok, 1 runtime error, 2 usage error, 3 bad input,
130 interrupted (Ctrl-C), 128+N ended by signal N (143 SIGTERM, 129 SIGHUP), 141 the reader
closed the pipe (as coreutils do).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class StillError(Exception):
    """A failure reported to the user as one line, without a traceback."""

    exit_code = EXIT_RUNTIME


class UsageError(StillError):
    """Options that cannot work together, or a value that cannot be used."""

    exit_code = EXIT_USAGE


class BadInput(StillError):
    """Malformed input, located as ``source:line: what is wrong``."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


class Terminated(BaseException):
    """Raised by the SIGTERM/SIGHUP handler so that every ``with`` block unwinds (``.part`` files
    are removed) before the process exits 128+N. A BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


class MissingExtra(StillError):
    """An optional dependency is not installed; the message says which extra brings it."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed: pip install 'still[{extra}]'"
        )


def require(module: str, extra: str, purpose: str) -> None:
    """Fail with an install hint when an optional module cannot be imported."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, extra, purpose) from exc
