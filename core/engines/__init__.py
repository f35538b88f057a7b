"""One interface to three inference backends: ``hf`` (transformers), ``vllm`` and ``openai``.

    from still.core.engines import GenerationRequest, SamplingParams, open_engine, request_seed

    params = SamplingParams(max_tokens=512)                  # R1 defaults: T 0.6, top_p 0.95
    requests = [
        GenerationRequest(messages=({"role": "user", "content": q},), query_id=qid, sample_idx=i,
                          seed=request_seed(7, qid, i), params=params)
        for qid, q in queries for i in range(4)
    ]
    with open_engine("hf", "path/to/model", dtype="bfloat16", batch_size=8) as engine:
        for request, result in engine.generate(requests):   # completion order, not request order
            print(request.query_id, request.sample_idx, result.text, result.finish_reason)

Every request carries its own seed (:func:`request_seed` of the run's seed, the query id and the
sample index), so a sample is the same whatever the batch it ran in, the batch size, the number of
servers or workers, and whether the run was resumed. ``generate`` yields each request with its
result as soon as it is done: callers that need input order reorder by the request (the requests
are returned as given, so ``id(request)`` or the request itself can key a dict).

This module imports only the standard library and xxhash; a backend loads its heavy modules
(torch, transformers, vllm, an HTTP client) when it is opened.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

import xxhash

from still.core.errors import UsageError

# The DeepSeek-R1 usage recommendation (and the R1 report's evaluation settings).
R1_TEMPERATURE = 0.6
R1_TOP_P = 0.95
R1_MAX_TOKENS = 32768

EngineKind = Literal["hf", "vllm", "openai"]
ENGINE_KINDS: tuple[str, ...] = ("hf", "vllm", "openai")
FinishReason = Literal["stop", "length"]

# Seeds are kept below 2**31: every backend and server takes them as a signed 32-bit integer.
SEED_MODULUS = 2**31


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one response; the defaults are DeepSeek-R1's (T 0.6, top_p 0.95, 32768 tokens).

    ``temperature`` 0 means greedy decoding. ``stop`` strings end a response (the text is cut
    before the stop string, as vLLM does; ``finish_reason`` stays ``stop``).
    """

    temperature: float = R1_TEMPERATURE
    top_p: float = R1_TOP_P
    max_tokens: int = R1_MAX_TOKENS
    top_k: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, not {self.max_tokens}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be >= 1, not {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_request(self, seed: int | None) -> dict[str, Any]:
        """The parameters as vLLM's ``SamplingParams`` and OpenAI-style request bodies name them
        (``top_k``, ``stop`` and ``seed`` only when set)."""
        out: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if seed is not None:
            out["seed"] = seed
        if self.top_k is not None:
            out["top_k"] = self.top_k
        if self.stop:
            out["stop"] = list(self.stop)
        return out

    def as_record(self) -> dict[str, Any]:
        """The parameters as written on every output line (unset options left out)."""
        out = asdict(self)
        if self.top_k is None:
            del out["top_k"]
        if not self.stop:
            del out["stop"]
        else:
            out["stop"] = list(self.stop)
        return out


Message = Mapping[str, Any]


@dataclass(frozen=True)
class GenerationRequest:
    """One response to generate: a chat (``messages``) or a finished prompt string (``prompt``).

    ``messages`` go through the model's chat template (or the engine's ``template``); ``prefill``
    is appended after the generation prompt (e.g. ``"<think>\\n"``) and is not part of the
    result's text. ``prompt`` is sent as is (no template, no prefill). ``seed`` None lets the
    backend draw (not reproducible).
    """

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    prefill: str = ""
    query_id: str = ""
    sample_idx: int = 0
    seed: int | None = None
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise UsageError("a generation request needs exactly one of messages or prompt")
        if self.prompt is not None and self.prefill:
            raise UsageError("prefill applies to chat messages only; put it at the end of the prompt")


@dataclass(frozen=True)
class GenerationResult:
    """What a backend produced for one request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    seed: int | None
    model: str
    latency_s: float


class Engine(Protocol):
    """What ``open_engine`` returns. Use it as a context manager or call ``close()``."""

    kind: str
    model: str

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[GenerationRequest, GenerationResult]]:
        """Yield ``(request, result)`` for every request, in completion order (not request order)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class EngineBase:
    """Context-manager plumbing shared by the backends."""

    kind = ""
    model = ""

    def close(self) -> None:
        """Release the model or connections; idempotent."""

    def __enter__(self) -> EngineBase:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def request_seed(global_seed: int, query_id: str, sample_idx: int) -> int:
    """The seed of one sample: xxh3-64 of (global seed, query id, sample index), below 2**31.

    Depends on nothing else, so a sample does not change with batch composition, worker count,
    server count or resume.
    """
    key = f"{global_seed}\x1f{query_id}\x1f{sample_idx}".encode()
    return xxhash.xxh3_64_intdigest(key) % SEED_MODULUS


# kind -> (module under still.core.engines, class); each backend module imports its heavy
# dependencies inside the class, so opening one never loads the others.
_BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("hf", "HFEngine"),
    "openai": ("openai", "OpenAIEngine"),
    "vllm": ("vllm", "VLLMEngine"),
}


def open_engine(kind: str, model: str, **options: Any) -> Engine:
    """Open a backend for ``model`` (a local directory, a hub id, or a served model name).

    Options per backend (all keyword):

    - ``hf``: ``dtype`` ("auto", "float32", "bfloat16", "float16"), ``device`` ("auto", "cpu",
      "cuda", "cuda:1"), ``batch_size`` (default 8), ``template`` (a Jinja chat template file),
      ``trust_remote_code``.
    - ``openai``: ``base_urls`` (one or more ``http://host:port/v1``), ``api_key_env`` (default
      ``OPENAI_API_KEY``), ``concurrency`` (requests in flight, default 8 per URL), ``timeout_s``,
      ``retries``, ``template`` (render chats locally and send text completions).
    - ``vllm``: ``tensor_parallel_size``, ``data_parallel_size``, ``dtype``, ``max_model_len``,
      ``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ``enforce_eager``, ``template``.
    """
    if kind not in _BACKENDS:
        raise UsageError(f"unknown engine {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    module_name, class_name = _BACKENDS[kind]
    module = importlib.import_module(f"still.core.engines.{module_name}")
    engine: Engine = getattr(module, class_name)(model, **options)
    return engine


def render_request(tokenizer: Any, request: GenerationRequest) -> str:
    """The prompt text of a request: its ``prompt`` as is, or its chat through the tokenizer's
    chat template with the prefill after the generation prompt."""
    if request.prompt is not None:
        return request.prompt
    from still.core.models import render_chat

    assert request.messages is not None
    return render_chat(tokenizer, request.messages, request.prefill)


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """The text before the earliest stop string, or None when none occurs (servers differ on
    whether they leave the stop text in; every backend cuts it the same way)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else None


def sort_by_length(requests: Sequence[GenerationRequest], lengths: Sequence[int]) -> list[int]:
    """Indices of ``requests`` longest prompt first (ties in request order): batches of similar
    length waste the least padding, and the longest batch fails first if memory is short."""
    return sorted(range(len(requests)), key=lambda i: -lengths[i])


__all__ = [
    "ENGINE_KINDS",
    "Engine",
    "EngineBase",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "Message",
    "R1_MAX_TOKENS",
    "R1_TEMPERATURE",
    "R1_TOP_P",
    "SamplingParams",
    "cut_at_stop",
    "render_request",
    "open_engine",
    "request_seed",
    "sort_by_length",
]
