"""The ``still`` command line: a click group whose subcommands load on first use.

Command modules import only click and the standard library at module level, so ``still --help``,
``still CMD --help`` and TAB completion stay fast; heavy libraries load inside the callbacks.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from still import __version__

# name -> (module under still.cli, attribute). Register only commands that work.
COMMANDS: dict[str, tuple[str, str]] = {
    "decontam": ("decontam", "command"),
    "dedup": ("dedup", "command"),
    "distill-train": ("distill_train", "command"),
    "eval": ("eval", "command"),
    "generate": ("generate", "command"),
    "grade": ("grade", "command"),
    "merge": ("merge", "command"),
    "sample": ("sample", "command"),
    "score": ("score", "command"),
    "verify": ("verify", "command"),
}

# The one-line summaries `still --help` lists, so that listing imports no command module (each
# command module builds its option stack at import; all ten cost ~15 ms of a ~150 ms start).
# tests/test_frame.py checks each equals the command's own short help, so they cannot drift.
SHORT_HELP: dict[str, str] = {
    "decontam": "Drop (or mark) records that contain benchmark questions.",
    "dedup": "Remove exact and near-duplicate records (one process, N workers, or a staged plan).",
    "distill-train": "Train a student on JSONL traces: sft, kd (logit distillation) or redi.",
    "eval": "Benchmark scores with honest statistics: avg@k, pass@k, cons@k, intervals, provenance.",
    "generate": "Generate -k responses per query from each --model, one output line per response.",
    "grade": "Pass rate, mean score and CV per query and model, and a difficulty level.",
    "merge": "Merge models fine-tuned from one base, tensor by tensor, into --out.",
    "sample": "Select a training set: by difficulty mix, pass rate, CV, length, quotas and presets.",
    "score": "Per-response statistics from a reference model, under one key.",
    "verify": "Add a verdict to every record: math answers, multiple choice and code.",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(f"still.cli.{target[0]}")
        command: click.Command = getattr(module, target[1])
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # as click.Group.format_commands does, from the table instead of the imported commands
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        # a bare Command shortens the summary exactly as the real one would (click's own rule)
        rows = [(name, click.Command(name, help=SHORT_HELP[name]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            from still.cli._common import PipeClosed

            raise PipeClosed() from exc


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="still")
@click.option("--debug", is_flag=True, envvar="STILL_DEBUG", help="Show tracebacks on errors.")
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="STILL_CONFIG",
    show_envvar=True,
    help="Option defaults (TOML) [default: still.toml in the working directory, if any].",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, config_path: str | None) -> None:
    """Small, composable commands for reasoning distillation.

    Every command reads JSONL (files or stdin) and writes JSONL to stdout; logs and the run
    summary go to stderr. Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 bad input,
    130 interrupted, 141 broken pipe.

    An option's value comes from the command line, else its environment variable
    (STILL_QUERY_FIELD, STILL_RESPONSE_FIELD, STILL_QUERY_ID_FIELD, ...), else the config file
    (top-level keys for every command, [COMMAND] tables for one), else its default.
    """
    if debug:
        os.environ["STILL_DEBUG"] = "1"
    if ctx.invoked_subcommand is not None:
        from still.cli._config import option_defaults

        command = ctx.command.get_command(ctx, ctx.invoked_subcommand)  # type: ignore[attr-defined]
        defaults = option_defaults(config_path, ctx.invoked_subcommand, command)
        if defaults:
            ctx.default_map = {ctx.invoked_subcommand: defaults}


def main(argv: list[str] | None = None) -> Any:
    """Console entry point (``still``) and ``python -m still``."""
    from still.cli._common import run_main

    return run_main(cli, argv)


__all__ = ["cli", "main", "COMMANDS", "SHORT_HELP"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
