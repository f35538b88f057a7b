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


def run_main(group: click.Group, argv: list[str] | None) -> int:
    """Run the CLI with documented exit codes and no tracebacks unless ``--debug``."""
    from still.core.errors import EXIT_BROKEN_PIPE, EXIT_RUNTIME, StillError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled(args)
    try:
        rv = group.main(args=args, prog_name="still", standalone_mode=False)
        sys.stdout.flush()
        code = rv if isinstance(rv, int) else 0
    except BrokenPipeError:
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        code = EXIT_RUNTIME
    except KeyboardInterrupt:
        code = 130
    except StillError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"still: {exc}", err=True)
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
)


def stream_options(fn: F) -> F:
    """Add the common stream options and pass them to the callback as ``stream``."""
    decorators = [
        click.argument("inputs", nargs=-1, type=click.Path(allow_dash=True, dir_okay=False)),
        click.option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write here (atomically) instead of stdout; .gz compresses.",
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
            help="Dotted path of the query [default: query, else user turns of messages, prompt, problem, question].",
        ),
        click.option(
            "--response-field",
            metavar="PATH",
            help="Dotted path of the response [default: response, else last assistant turn of messages].",
        ),
        click.option("--id-field", default="id", show_default=True, metavar="PATH", help="Field holding the query id."),
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


class _Progress:
    """A records-read counter on stderr, shown only on a TTY and never with -q."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.last = 0.0

    def wrap(self, records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
        if not self.enabled:
            return records  # no counter: no extra generator step per record
        return self._counted(records, stats)

    def _counted(self, records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
        for rec in records:
            now = time.monotonic()
            if now - self.last > 0.5:
                self.last = now
                sys.stderr.write(f"\r{self.label}: {stats.read} read")
                sys.stderr.flush()
            yield rec
        sys.stderr.write("\r\033[K")


def run_stream(
    name: str,
    stream: StreamOptions,
    process: Callable[[Iterator[Record], RunStats], Iterable[Record]],
    on_success: Callable[[RunStats], None] | None = None,
) -> None:
    """Read, shard, process and write records, then print the summary and check the accounting.

    ``on_success`` runs after the output is complete (e.g. to commit incremental state).
    """
    from still.core.fields import shard_filter
    from still.core.jsonl import AtomicOutput, read_records, write_records
    from still.core.stats import RunStats

    stats = RunStats(name)
    if not stream.inputs and sys.stdin.isatty() and not stream.quiet:
        click.echo(f"still {name}: reading JSONL from standard input (Ctrl-D ends it)", err=True)
    records = read_records(stream.inputs or ("-",), stats, stream.policy(), int(stream.max_line_mb * 1024 * 1024))
    progress = _Progress(f"still {name}", sys.stderr.isatty() and not stream.quiet)
    records = progress.wrap(records, stats)
    records = shard_filter(records, stream.parsed_shard(), stream.fields(), stats)
    with AtomicOutput(stream.output) as sink:
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
        click.echo(stats.summary(), err=True)
