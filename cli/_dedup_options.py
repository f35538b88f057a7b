"""Options shared by ``still dedup run`` and ``still dedup plan sign`` (one index, one meaning)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])

_INDEX_OPTIONS = [
    click.option(
        "--key",
        type=click.Choice(["query", "response", "query+response"]),
        default="query",
        show_default=True,
        help="Which text decides that two records are duplicates.",
    ),
    click.option(
        "--threshold",
        type=click.FloatRange(0.0, 1.0, min_open=True),
        default=0.8,
        show_default=True,
        help="Near duplicates: exact Jaccard similarity of word-shingle sets at or above this.",
    ),
    click.option("--exact-only", is_flag=True, help="Only exact duplicates (after normalisation); no MinHash."),
    click.option(
        "--normalize",
        "normalise",
        default="nfkc,lower,space",
        show_default=True,
        metavar="STEPS",
        help="Comma list of nfkc, lower, space, punct (drop punctuation), digits (every number -> 0), or none. "
        "Digits are kept by default: a problem with other numbers is another problem.",
    ),
    click.option(
        "--ngram",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Word n-gram size (shorter texts use less).",
    ),
    click.option(
        "--num-perm", type=click.IntRange(min=2), default=128, show_default=True, help="MinHash permutations."
    ),
    click.option(
        "--bands", type=click.IntRange(min=0), default=0, help="LSH bands [default: chosen from --threshold]."
    ),
    click.option(
        "--rows", type=click.IntRange(min=0), default=0, help="LSH rows per band [default: chosen from --threshold]."
    ),
    click.option("--seed", type=int, default=1, show_default=True, help="MinHash seed (datasketch's default is 1)."),
]


_NAMES = ("key", "threshold", "exact_only", "normalise", "ngram", "num_perm", "bands", "rows", "seed")


def index_options(fn: F) -> F:
    """Add --key, --threshold, --exact-only, --normalize, --ngram, --num-perm, --bands, --rows and
    --seed, passed to the callback as ``index``: DedupConfig keyword arguments."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from still.core import minhash as mh

        given = {name: kwargs.pop(name) for name in _NAMES}
        given["normalise"] = mh.Normaliser.parse(given["normalise"]).steps
        given["near"] = not given.pop("exact_only")
        return fn(*args, index=given, **kwargs)

    out: Any = wrapper
    for decorator in reversed(_INDEX_OPTIONS):
        out = decorator(out)
    return cast(F, out)


def stream_option_subset(*names: str) -> Callable[[F], F]:
    """Some of every stream command's options (``stream_options``: same flags, help, defaults and
    environment variables), passed to the callback under their own names: for the plan's stages,
    which read files but do not stream one output."""

    def decorator(fn: F) -> F:
        from still.cli._common import stream_options

        def probe(**kwargs: Any) -> None: ...

        chosen = [p for p in getattr(stream_options(probe), "__click_params__", []) if p.name in names]
        missing = set(names) - {p.name for p in chosen}
        assert not missing, f"not stream options: {missing}"
        out: Any = fn
        out.__click_params__ = [*getattr(fn, "__click_params__", []), *chosen]
        return cast(F, out)

    return decorator
