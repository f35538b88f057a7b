"""Engine and sampling options for commands that run a model (grade, verify --judge).

``engine_options(prefix)`` adds ``--{prefix}engine``, ``--{prefix}base-url``, ... and passes them
to the callback as one :class:`EngineChoice`. Imports only click and the standard library.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from still.core.engines import SamplingParams

F = TypeVar("F", bound=Callable[..., Any])
ENGINE_KEYS = ("engine", "base_url", "dtype", "device", "batch_size", "max_tokens", "temperature", "top_p")


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    base_url: tuple[str, ...]
    dtype: str
    device: str
    batch_size: int
    max_tokens: int
    temperature: float
    top_p: float

    def open_options(self) -> dict[str, Any]:
        """Keyword options for ``open_engine`` of the chosen backend."""
        if self.engine == "openai":
            if not self.base_url:
                from still.core.errors import UsageError

                raise UsageError("the openai engine needs --base-url URL (e.g. http://127.0.0.1:8000/v1)")
            return {"base_urls": list(self.base_url)}
        if self.engine == "vllm":
            return {"dtype": self.dtype}
        return {"dtype": self.dtype, "device": self.device, "batch_size": self.batch_size}

    def params(self) -> SamplingParams:
        from still.core.engines import SamplingParams

        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)


def engine_options(prefix: str = "", max_tokens: int = 32768, what: str = "the model") -> Callable[[F], F]:
    """Options choosing the backend and sampling of ``what``; the callback gets ``{prefix}engine_choice``."""
    dash = f"--{prefix}-" if prefix else "--"
    under = f"{prefix.replace('-', '_')}_" if prefix else ""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {k: kwargs.pop(f"{under}{k}") for k in ENGINE_KEYS}
            kwargs[f"{under}engine_choice"] = EngineChoice(**values)
            return fn(**kwargs)

        options = [
            click.option(
                f"{dash}engine",
                f"{under}engine",
                type=click.Choice(["hf", "openai", "vllm"]),
                default="hf",
                show_default=True,
                help=f"Backend running {what}: transformers, an OpenAI-compatible server, or vLLM.",
            ),
            click.option(
                f"{dash}base-url",
                f"{under}base_url",
                multiple=True,
                metavar="URL",
                help="openai: server URL, e.g. http://127.0.0.1:8000/v1 (repeatable: load balanced).",
            ),
            click.option(f"{dash}dtype", f"{under}dtype", default="auto", show_default=True, help="hf/vllm: dtype."),
            click.option(
                f"{dash}device", f"{under}device", default="auto", show_default=True, help="hf: cpu, cuda, cuda:N."
            ),
            click.option(
                f"{dash}batch-size",
                f"{under}batch_size",
                type=click.IntRange(min=1),
                default=8,
                show_default=True,
                help="hf: requests per batch.",
            ),
            click.option(
                f"{dash}max-tokens",
                f"{under}max_tokens",
                type=click.IntRange(min=1),
                default=max_tokens,
                show_default=True,
                help="New tokens per response.",
            ),
            click.option(
                f"{dash}temperature",
                f"{under}temperature",
                type=click.FloatRange(min=0),
                default=0.6,
                show_default=True,
                help="Sampling temperature (DeepSeek-R1's 0.6; 0 is greedy).",
            ),
            click.option(
                f"{dash}top-p",
                f"{under}top_p",
                type=click.FloatRange(min=0, min_open=True, max=1),
                default=0.95,
                show_default=True,
                help="Nucleus sampling (DeepSeek-R1's 0.95).",
            ),
        ]
        out: Any = wrapper
        for deco in reversed(options):
            out = deco(out)
        return out  # type: ignore[no-any-return]

    return decorate


def refuse_unused(names: tuple[str, ...], needed: str) -> None:
    """A usage error when options that only act with ``needed`` were given without it."""
    ctx = click.get_current_context()
    given = [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given:
        from still.core.errors import UsageError

        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} only apply with {needed}")
