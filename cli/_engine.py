"""Engine and sampling options, declared once for every command that runs a model.

``engine_options(prefix)`` adds ``--{prefix}engine``, ``--{prefix}base-url``, the per-backend
options and the sampling options, and passes them to the callback as one :class:`EngineChoice`
(``generate``, ``grade -m`` and ``verify --judge`` use it). Imports only click and the standard
library.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from still.core.engines import SamplingParams

F = TypeVar("F", bound=Callable[..., Any])

# which EngineChoice fields each backend takes, under open_engine's names
_BACKEND_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "hf": (("dtype", "dtype"), ("device", "device"), ("batch_size", "batch_size"), ("template", "template")),
    "vllm": (
        ("dtype", "dtype"),
        ("template", "template"),
        ("tensor_parallel_size", "tensor_parallel_size"),
        ("data_parallel_size", "data_parallel_size"),
        ("enforce_eager", "enforce_eager"),
    ),
    "openai": (
        ("api_key_env", "api_key_env"),
        ("concurrency", "concurrency"),
        ("request_timeout", "timeout_s"),
        ("retries", "retries"),
        ("template", "template"),
    ),
}


_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "top_k", "stop")


@dataclass(frozen=True)
class EngineChoice:
    """The engine options of one command line (None: the backend's default)."""

    engine: str
    base_url: tuple[str, ...]
    dtype: str
    device: str
    batch_size: int
    template: str | None
    api_key_env: str | None
    concurrency: int | None
    request_timeout: float | None
    retries: int | None
    extra_body: str | None
    tensor_parallel_size: int | None
    data_parallel_size: int | None
    kv_cache_mb: int | None
    enforce_eager: bool | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    stop: tuple[str, ...]
    prefix: str = ""  # of the option names, for messages

    def open_options(self) -> dict[str, Any]:
        """Keyword options for ``open_engine`` of the chosen backend (servers: see ``model_options``)."""
        out = {name: getattr(self, key) for key, name in _BACKEND_KEYS[self.engine]}
        out = {name: value for name, value in out.items() if value is not None}
        if self.engine == "vllm" and self.kv_cache_mb:
            out["kv_cache_memory_bytes"] = self.kv_cache_mb * 1024 * 1024
        if self.engine == "openai" and self.extra_body is not None:
            out["extra_body"] = _json_object(self.extra_body, self._flag("extra-body"))
        return out

    def model_options(self, models: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """``open_engine`` options shared by ``models`` and those of single models: with the openai
        engine, ``--base-url URL`` serves every model and ``--base-url MODEL=URL`` only MODEL."""
        from still.core.errors import UsageError

        shared = self.open_options()
        if self.engine != "openai":
            if self.base_url:
                raise UsageError(f"{self._flag('base-url')} is for {self._flag('engine')} openai")
            return shared, {}
        if not self.base_url:
            raise UsageError(
                f"{self._flag('engine')} openai needs {self._flag('base-url')} URL (e.g. http://127.0.0.1:8000/v1)"
            )
        urls: list[str] = []
        bound: dict[str, list[str]] = {}
        for value in self.base_url:
            eq, scheme = value.find("="), value.find("://")
            if 0 < eq < scheme:
                model, url = value[:eq], value[eq + 1 :]
                if model not in models:
                    raise UsageError(f"{self._flag('base-url')} {value}: {model!r} is not one of the models")
                bound.setdefault(model, []).append(url)
            else:
                urls.append(value)
        for model in models:
            if not urls and model not in bound:
                raise UsageError(
                    f"model {model} has no server: add {self._flag('base-url')} URL or {self._flag('base-url')} "
                    f"{model}=URL"
                )
        shared["base_urls"] = urls
        return shared, {model: {"base_urls": urls + extra} for model, extra in bound.items()}

    def params(self) -> SamplingParams:
        from still.core.engines import SamplingParams

        return SamplingParams(**{name: getattr(self, name) for name in _SAMPLING_KEYS})

    def _flag(self, name: str) -> str:
        return f"--{self.prefix}-{name}" if self.prefix else f"--{name}"


ENGINE_KEYS = tuple(f.name for f in fields(EngineChoice) if f.name != "prefix")


def _json_object(text: str, option: str) -> dict[str, Any]:
    from still.core.errors import UsageError

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option}: not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object")
    return value


def _declarations(max_tokens: int, what: str) -> list[tuple[str, dict[str, Any]]]:
    """(flag without dashes, click.option keywords) of every engine option."""
    optional_int = {"type": click.IntRange(min=1), "default": None}
    return [
        (
            "engine",
            {
                "type": click.Choice(["hf", "vllm", "openai"]),
                "default": "hf",
                "show_default": True,
                "help": f"Backend running {what}: transformers, vLLM, or OpenAI-compatible servers.",
            },
        ),
        (
            "base-url",
            {
                "multiple": True,
                "metavar": "[MODEL=]URL",
                "help": "openai: a server, e.g. http://h:8000/v1 (repeatable: load balanced); MODEL=URL serves "
                "only that model.",
            },
        ),
        (
            "dtype",
            {
                "type": click.Choice(["auto", "float32", "bfloat16", "float16"]),
                "default": "auto",
                "show_default": True,
                "help": "hf/vllm: weights' dtype.",
            },
        ),
        ("device", {"default": "auto", "show_default": True, "help": "hf: cpu, cuda, cuda:N (auto: a GPU if any)."}),
        (
            "batch-size",
            {"type": click.IntRange(min=1), "default": 8, "show_default": True, "help": "hf: requests per batch."},
        ),
        ("template", {"type": click.Path(dir_okay=False), "metavar": "FILE.jinja", "help": "Chat template to use."}),
        ("api-key-env", {"metavar": "VAR", "help": "openai: env variable with the key [OPENAI_API_KEY]."}),
        ("concurrency", {**optional_int, "help": "openai: requests in flight per URL [8]."}),
        ("request-timeout", {"type": click.FloatRange(min=0.1), "help": "openai: seconds per request [600]."}),
        ("retries", {"type": click.IntRange(min=0), "help": "openai: retries per request [4]."}),
        (
            "extra-body",
            {
                "metavar": "JSON",
                "help": "openai: fields merged into every request, e.g. "
                '\'{"generation_config": "{\\"do_sample\\": true}"}\'.',
            },
        ),
        ("tensor-parallel-size", {**optional_int, "help": "vllm: GPUs per replica."}),
        ("data-parallel-size", {**optional_int, "help": "vllm: replicas."}),
        ("kv-cache-mb", {**optional_int, "help": "vllm: KV cache size (needed on CPU)."}),
        (
            "enforce-eager",
            {"is_flag": True, "default": None, "help": "vllm: no CUDA graphs / compilation (starts faster)."},
        ),
        (
            "max-tokens",
            {
                "type": click.IntRange(min=1),
                "default": max_tokens,
                "show_default": True,
                "help": "New tokens per response.",
            },
        ),
        (
            "temperature",
            {
                "type": click.FloatRange(min=0),
                "default": 0.6,
                "show_default": True,
                "help": "Sampling temperature (DeepSeek-R1's 0.6; 0 is greedy).",
            },
        ),
        (
            "top-p",
            {
                "type": click.FloatRange(min=0, min_open=True, max=1),
                "default": 0.95,
                "show_default": True,
                "help": "Nucleus sampling (DeepSeek-R1's 0.95).",
            },
        ),
        ("top-k", {**optional_int, "help": "Sample only from the k likeliest tokens."}),
        ("stop", {"multiple": True, "metavar": "TEXT", "help": "End a response before TEXT (repeatable)."}),
    ]


def engine_options(prefix: str = "", max_tokens: int = 32768, what: str = "the model") -> Callable[[F], F]:
    """Options choosing the backend and sampling of ``what``; the callback gets ``{prefix}engine_choice``."""
    dash = f"--{prefix}-" if prefix else "--"
    under = f"{prefix.replace('-', '_')}_" if prefix else ""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {k: kwargs.pop(f"{under}{k}") for k in ENGINE_KEYS}
            kwargs[f"{under}engine_choice"] = EngineChoice(**values, prefix=prefix)
            return fn(**kwargs)

        out: Any = wrapper
        for flag, keywords in reversed(_declarations(max_tokens, what)):
            out = click.option(f"{dash}{flag}", f"{under}{flag.replace('-', '_')}", **keywords)(out)
        return out  # type: ignore[no-any-return]

    return decorate


resume_option = click.option(
    "--resume", is_flag=True, help="With -o FILE: continue the run journalled in FILE.journal (same options)."
)


def refuse_unused(names: tuple[str, ...], needed: str) -> None:
    """A usage error when options that only act with ``needed`` were given without it."""
    ctx = click.get_current_context()
    given = [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given:
        from still.core.errors import UsageError

        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} only apply with {needed}")
