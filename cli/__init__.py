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
    "eval": ("eval", "command"),
    "sample": ("sample", "command"),
    "verify": ("verify", "command"),
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


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="still")
@click.option("--debug", is_flag=True, envvar="STILL_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Small, composable commands for reasoning distillation.

    Every command reads JSONL (files or stdin) and writes JSONL to stdout; logs and the run
    summary go to stderr. Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 bad input.
    """
    if debug:
        os.environ["STILL_DEBUG"] = "1"


def main(argv: list[str] | None = None) -> Any:
    """Console entry point (``still``) and ``python -m still``."""
    from still.cli._common import run_main

    return run_main(cli, argv)


__all__ = ["cli", "main", "COMMANDS"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
