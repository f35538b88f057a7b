"""Click groups with a default subcommand (``still decontam [run]``, ``still eval [run]``)."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

DEFAULT_COMMAND = "run"


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``run``.

    So ``still decontam --against x < in.jsonl`` and ``still decontam in.jsonl`` work, while
    ``still decontam index build ...`` and ``still decontam --help`` reach the group.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.resilient_parsing and not args:  # TAB completion: offer the subcommands
            return super().parse_args(ctx, args)
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        items = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):  # options of the default subcommand too
            run_command = self.commands[DEFAULT_COMMAND]
            sub_ctx = click.Context(run_command, parent=ctx, info_name=DEFAULT_COMMAND)
            items += run_command.shell_complete(sub_ctx, incomplete)
        return items
