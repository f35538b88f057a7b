"""Option defaults from a TOML file, so that a field mapping is set once per pipeline.

The file is ``--config FILE`` (or ``STILL_CONFIG``), else ``still.toml`` in the working
directory. Top-level keys apply to every command that has the option; a ``[dedup]`` (etc.)
table to that command only. Keys are long option names without dashes in front
(``query-field``, ``max-per-key``). Precedence, highest first: command line, environment
variable, this file, built-in default (click's own order for ``default_map``).
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


def option_defaults(config_path: str | None, command_name: str, command: click.Command | None) -> dict[str, Any]:
    """The default_map for ``command_name`` from the config file (empty when there is none)."""
    from still.core.errors import UsageError

    path = config_path or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    if path is None or command is None:
        return {}
    data = _load(path)
    names = _param_names(command)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue  # a [command] table
        if key in names:  # a top-level key applies where the command has the option
            defaults[names[key]] = value
    table = data.get(command_name, {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: {command_name} must be a table ([{command_name}])")
    for key, value in table.items():
        if key not in names:
            raise UsageError(f"{path}: [{command_name}] {key}: still {command_name} has no option --{key}")
        defaults[names[key]] = value
    return defaults
