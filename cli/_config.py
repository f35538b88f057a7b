"""Option defaults from a TOML file, so that a field mapping is set once per pipeline.

The file is ``--config FILE`` (or ``STILL_CONFIG``), else ``still.toml`` in the working
directory. Top-level keys apply to every command that has the option; a ``[dedup]`` (etc.)
table to that command only (for a command with subcommands, such as ``dedup [run] | plan ...``,
to each subcommand that has the option; ``[dedup.plan.sign]`` to one subcommand). Keys are long
option names without dashes in front (``query-field``, ``max-per-key``). Precedence, highest
first: command line, environment variable, this file, built-in default (click's own order for
``default_map``).
"""

from __future__ import annotations

import os
from typing import Any

import click

DEFAULT_CONFIG = "still.toml"


def _load(path: str) -> dict[str, Any]:
    from still.core.errors import UsageError

    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            raise UsageError(f"{path}: reading TOML on Python 3.10 needs: pip install tomli") from None
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    return data


def _param_names(command: click.Command) -> dict[str, str]:
    """Option spellings (``max-per-key``, ``max_per_key``) -> the parameter's name."""
    names: dict[str, str] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        names[param.name] = param.name
        for opt in param.opts:
            if opt.startswith("--"):
                names[opt[2:]] = param.name
    return names


def _defaults(
    command: click.Command, where: str, top: dict[str, Any], table: dict[str, Any], path: str
) -> dict[str, Any]:
    """The default_map of ``command`` (nested for groups such as ``still dedup [run] | plan ...``).

    Top-level keys and the command's table apply to every subcommand that has the option (so
    ``[dedup] key = "response"`` means the same in ``dedup run`` and ``dedup plan sign``); a
    ``[dedup.plan.sign]`` table to that subcommand only, over them. A table key that no (sub)command
    has is an error.
    """
    from still.core.errors import UsageError

    settings = {key: value for key, value in table.items() if not isinstance(value, dict)}
    subtables = {key: value for key, value in table.items() if isinstance(value, dict)}
    commands = command.commands if isinstance(command, click.Group) else {}
    for name in subtables:
        if name not in commands:
            raise UsageError(f"{path}: [{where}.{name}]: still {where.replace('.', ' ')} has no subcommand {name}")
    names = _param_names(command)
    default_map = {names[key]: value for key, value in {**top, **settings}.items() if key in names}
    used = set(settings) & set(names)
    for name, sub in commands.items():
        inherited = {**top, **settings}
        sub_defaults = _defaults(sub, f"{where}.{name}", inherited, subtables.get(name, {}), path)
        used |= set(settings) & _option_spellings(sub)
        if sub_defaults:
            default_map[name] = sub_defaults
    for key in settings:
        if key not in used:
            raise UsageError(f"{path}: [{where}] {key}: still {where.replace('.', ' ')} has no option --{key}")
    return default_map


def _option_spellings(command: click.Command) -> set[str]:
    """Every option spelling of ``command`` and of its subcommands."""
    spellings = set(_param_names(command))
    for sub in command.commands.values() if isinstance(command, click.Group) else ():
        spellings |= _option_spellings(sub)
    return spellings


def option_defaults(config_path: str | None, command_name: str, command: click.Command | None) -> dict[str, Any]:
    """The default_map for ``command_name`` from the config file (empty when there is none)."""
    from still.core.errors import UsageError

    path = config_path or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    if path is None or command is None:
        return {}
    data = _load(path)
    top = {key: value for key, value in data.items() if not isinstance(value, dict)}
    table = data.get(command_name, {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: {command_name} must be a table ([{command_name}])")
    return _defaults(command, command_name, top, table, path)
