"""What every stream command shares: input/output options, error policy, summary and exits.

Imports only click and the standard library at module level (startup budget); the JSONL core
is imported when a command runs.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from still.core.fields import Fields, Shard
    from still.core.jsonl import ErrorPolicy, Record
    from still.core.stats import RunStats

F = TypeVar("F", bound=Callable[..., Any])


def _debug_enabled(argv: list[str]) -> bool:
    return bool(os.environ.get("STILL_DEBUG")) or "--debug" in argv


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class PipeClosed(Exception):
    """stdout's reader went away (``still ... | head``): exit 141 like coreutils, quietly.

    Raised in place of BrokenPipeError inside the click group, because click turns EPIPE into
    exit 1 before a caller can see it."""


def _on_signal(signum: int, frame: object) -> None:
    from still.core.errors import Terminated

    raise Terminated(signum)


def _install_signal_handlers() -> None:
    """SIGTERM and SIGHUP (timeout, Slurm, cron, a closed terminal) unwind like Ctrl-C does, so
    atomic outputs remove their ``.part`` files; the process then exits 128+N."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread, or no such signal here
            pass


def _how_to_go_on(exc: Exception, args: list[str]) -> str:
    """For a bad line: the options that let the run go on past it."""
    from still.core.errors import BadInput

    if not isinstance(exc, BadInput) or not exc.line:
        return ""
    if exc.message.startswith("line longer than"):
        return " (raise --max-line-mb, or --on-error skip / quarantine=FILE to set such lines aside)"
    if any(a.startswith("--on-error") for a in args):
        return ""
    return " (--on-error skip counts and skips such lines; --on-error quarantine=FILE keeps them in FILE)"


def run_main(group: click.Group, argv: list[str] | None) -> int:
    """Run the CLI with documented exit codes and no tracebacks unless ``--debug``."""
    from still.core.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_RUNTIME, StillError, Terminated

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled(args)
    _install_signal_handlers()
    try:
        rv = group.main(args=args, prog_name="still", standalone_mode=False)
        sys.stdout.flush()
        code = rv if isinstance(rv, int) else 0
    except (BrokenPipeError, PipeClosed):
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            code = EXIT_INTERRUPTED  # click already closed the terminal's ^C line
        else:
            click.echo("Aborted!", err=True)
            code = EXIT_RUNTIME
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except Terminated as exc:
        code = 128 + exc.signum
    except StillError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"still: {exc}{_how_to_go_on(exc, args)}", err=True)
        code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence, reported without traceback
        if debug:
            traceback.print_exc()
        click.echo(f"still: internal error: {type(exc).__name__}: {exc} (--debug shows the traceback)", err=True)
        code = EXIT_RUNTIME
    sys.exit(code)


@dataclass
class StreamOptions:
    """Options shared by every JSONL stream command."""

    inputs: tuple[str, ...]
    output: str | None
    on_error: str
    stats_path: str | None
    quiet: bool
    query_field: str | None
    response_field: str | None
    id_field: str
    shard: str | None
    max_line_mb: float
    gzip_level: int

    def fields(self) -> Fields:
        from still.core.fields import Fields

        return Fields(query_path=self.query_field, response_path=self.response_field, id_path=self.id_field)

    def policy(self) -> ErrorPolicy:
        from still.core.jsonl import ErrorPolicy

        return ErrorPolicy.parse(self.on_error)

    def parsed_shard(self) -> Shard:
        from still.core.fields import Shard

        return Shard.parse(self.shard)


_STREAM_KEYS = (
    "inputs",
    "output",
    "on_error",
    "stats_path",
    "quiet",
    "query_field",
    "response_field",
    "id_field",
    "shard",
    "max_line_mb",
    "gzip_level",
)


def stream_options(fn: F) -> F:
    """Add the common stream options and pass them to the callback as ``stream``."""
    decorators = [
        click.argument("inputs", nargs=-1, type=click.Path(allow_dash=True, dir_okay=False)),
        click.option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write here (atomically, with the umask's mode) instead of stdout; .gz compresses.",
        ),
        click.option(
            "--gzip-level",
            type=click.IntRange(1, 9),
            default=1,
            show_default=True,
            help="Compression level of -o FILE.gz: 1 fastest, 9 smallest.",
        ),
        click.option(
            "--on-error",
            default="fail",
            show_default=True,
            metavar="fail|skip|quarantine=FILE",
            help="What to do with a malformed line: stop (exit 3), count and skip it, or copy it to FILE.",
        ),
        click.option("--stats", "stats_path", metavar="FILE", help="Write the run summary here as JSON."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors."),
        click.option(
            "--query-field",
            metavar="PATH",
            envvar="STILL_QUERY_FIELD",
            show_envvar=True,
            help="Dotted path of the query [default: query, else the user turns of messages or conversations "
            "(ShareGPT), prompt, problem, question].",
        ),
        click.option(
            "--response-field",
            metavar="PATH",
            envvar="STILL_RESPONSE_FIELD",
            show_envvar=True,
            help="Dotted path of the response [default: response, else the last assistant turn of messages or "
            "conversations, else solution].",
        ),
        click.option(
            "--query-id-field",
            "--id-field",
            "id_field",
            default="id",
            show_default=True,
            metavar="PATH",
            envvar="STILL_QUERY_ID_FIELD",
            show_envvar=True,
            help="Field naming the query a record answers (all responses to one query share it); "
            "'' or a missing field: the hash of the normalised query.",
        ),
        click.option(
            "--shard",
            metavar="i/n",
            help="Process only part i of n (0-based), split by id hash; n runs together cover the input.",
        ),
        click.option(
            "--max-line-mb",
            type=click.FloatRange(min=0.001),
            default=16.0,
            show_default=True,
            help="Reject input lines longer than this (MiB).",
        ),
        click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks on errors."),
    ]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        stream = StreamOptions(**{k: kwargs.pop(k) for k in _STREAM_KEYS})
        return fn(stream=stream, **kwargs)

    for deco in reversed(decorators):
        wrapper = deco(wrapper)
    return wrapper  # type: ignore[return-value]


def _is_pipe(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _input_bytes(inputs: tuple[str, ...]) -> int | None:
    """Total size of plain input files, or None when unknown (stdin, gzip, a device)."""
    total = 0
    for name in inputs or ("-",):
        if name == "-" or not os.path.isfile(name):
            return None
        with open(name, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                return None
        total += os.path.getsize(name)
    return total


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Records read, rate, and percent/ETA when the input size is known, on stderr (a TTY only,
    never with -q).

    Alone on the terminal the line is redrawn in place; in a pipeline of several stages (stdin or
    stdout is a pipe) each update is a full line every few seconds, prefixed with the command,
    so the stages' lines never overwrite each other.
    """

    def __init__(self, label: str, enabled: bool, total_bytes: int | None = None, in_pipe: bool = False) -> None:
        self.label = label
        self.enabled = enabled
        self.total_bytes = total_bytes
        self.in_pipe = in_pipe
        self.interval = 5.0 if in_pipe else 0.5
        self.started = time.monotonic()
        self.last = self.started
        self.done_bytes = 0

    @classmethod
    def for_stream(cls, name: str, stream: StreamOptions) -> Progress:
        enabled = sys.stderr.isatty() and not stream.quiet
        if not enabled:
            return cls(name, False)
        in_pipe = _is_pipe(0) or _is_pipe(1)
        return cls(f"still {name}", True, _input_bytes(stream.inputs), in_pipe)

    def line(self, read: int, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        text = f"{self.label}: {read:,} read, {read / elapsed:,.0f}/s"
        if self.total_bytes:
            frac = min(self.done_bytes / self.total_bytes, 1.0)
            text += f", {100 * frac:.0f}%"
            if frac > 0:
                text += f", ETA {_clock(elapsed * (1 - frac) / frac)}"
        return text

    def wrap(self, records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
        if not self.enabled:
            return records  # no counter: no extra generator step per record
        return self._counted(records, stats)

    def _counted(self, records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
        for rec in records:
            if rec.raw is not None:
                self.done_bytes += len(rec.raw)
            now = time.monotonic()
            if now - self.last > self.interval:
                self.last = now
                if self.in_pipe:
                    sys.stderr.write(self.line(stats.read, now) + "\n")
                else:
                    sys.stderr.write("\r" + self.line(stats.read, now) + "\033[K")
                sys.stderr.flush()
            yield rec
        if not self.in_pipe:
            sys.stderr.write("\r\033[K")


def run_stream(
    name: str,
    stream: StreamOptions,
    process: Callable[[Iterator[Record], RunStats], Iterable[Record]],
    on_success: Callable[[RunStats], None] | None = None,
    parse: bool = True,
) -> None:
    """Read, shard, process and write records, then print the summary and check the accounting.

    ``on_success`` runs after the output is complete (e.g. to commit incremental state).
    ``parse=False`` hands ``process`` unparsed lines (``LazyRecord``) that it must check itself;
    with --shard the lines are parsed here (the shard of a record depends on its id).
    """
    from still.core.fields import shard_filter
    from still.core.jsonl import AtomicOutput, read_records, write_records
    from still.core.stats import RunStats

    stats = RunStats(name)
    if not stream.inputs and sys.stdin.isatty() and not stream.quiet:
        click.echo(f"still {name}: reading JSONL from standard input (Ctrl-D ends it)", err=True)
    shard = stream.parsed_shard()
    parse = parse or shard.active
    records = read_records(
        stream.inputs or ("-",), stats, stream.policy(), int(stream.max_line_mb * 1024 * 1024), parse
    )
    records = Progress.for_stream(name, stream).wrap(records, stats)
    records = shard_filter(records, shard, stream.fields(), stats)
    with AtomicOutput(stream.output, stream.gzip_level) as sink:
        write_records(process(records, stats), sink, stats)
    stats.check_balance()
    if on_success is not None:
        on_success(stats)
    finish(stats, stream)


def finish(stats: RunStats, stream: StreamOptions) -> None:
    """Print the summary on stderr and write ``--stats`` JSON."""
    if stream.stats_path:
        import json

        from still.core.jsonl import AtomicOutput

        with AtomicOutput(stream.stats_path) as out:
            out.write(json.dumps(stats.as_dict(), indent=2).encode() + b"\n")
    if not stream.quiet:
        for warning in stats.warnings:
            click.echo(f"still {stats.command}: warning: {warning}", err=True)
        click.echo(stats.summary(), err=True)
