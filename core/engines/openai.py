"""The ``openai`` engine: any OpenAI-compatible server (``vllm serve``, SGLang, ``transformers serve``).

One or many base URLs share the work: each request goes to the server with the fewest requests
in flight (client-side load balancing), each server has at most ``concurrency`` requests in
flight, failed requests (connection errors, timeouts, 429 and 5xx) are retried with exponential
backoff on another server when there is one, and the API key comes from an environment variable.
The standard library's ``http.client`` with one keep-alive connection per thread and server keeps
the dependencies at zero.

Chats without a prefill go to ``/chat/completions`` (the server applies the chat template); a
prompt string, a prefill or a local ``template`` renders the prompt here (the model's tokenizer
is loaded for its template) and goes to ``/completions``. One request per sample (servers such
as ``transformers serve`` ignore ``n``), each with its own seed. Results come in completion order.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from still.core.engines import (
    EngineBase,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    cut_at_stop,
    render_request,
)
from still.core.errors import StillError, UsageError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class RequestFailed(Exception):
    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class _Server:
    """One base URL: where it is, how many requests it has in flight, and until when it rests."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"--base-url {url!r}: expected http(s)://host[:port]/path")
        self.url = url.rstrip("/")
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = parsed.port or (443 if self.https else 80)
        self.path = parsed.path
        self.in_flight = 0
        self.failures = 0  # consecutive: the rest after a failure doubles with each
        self.resting_until = 0.0


class OpenAIEngine(EngineBase):
    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_urls: Iterable[str] | str = ("http://127.0.0.1:8000/v1",),
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        template: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise UsageError("the openai engine needs at least one base URL")
        if concurrency < 1:
            raise UsageError(f"concurrency must be >= 1, not {concurrency}")
        self.model = model
        self.servers = [_Server(u) for u in urls]
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.template = template
        self.extra_body = dict(extra_body or {})
        self.headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._tokenizer: Any = None
        self._lock = threading.Condition()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=concurrency * len(self.servers), thread_name_prefix="still-http")
        self.max_in_flight = 0  # the most requests seen in flight at once (all servers)

    # -- prompts ---------------------------------------------------------------------------

    def _render(self, request: GenerationRequest) -> str:
        if self._tokenizer is None and request.prompt is None:
            from still.core.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.model, template=self.template)
        return render_request(self._tokenizer, request)

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, **request.params.as_request(request.seed)}
        body.update(self.extra_body)
        if request.messages is not None and not request.prefill and self.template is None:
            body["messages"] = [dict(m) for m in request.messages]
            return "/chat/completions", body
        body["prompt"] = self._render(request)
        return "/completions", body

    # -- transport -------------------------------------------------------------------------

    def _acquire(self, avoid: _Server | None) -> _Server:
        """The server with the fewest requests in flight that has room. A server resting after
        failures is used only when every server rests; ``avoid`` (the one that just failed) only
        when no other has room."""
        with self._lock:
            while True:
                now = time.monotonic()
                awake = [s for s in self.servers if s.resting_until <= now]
                if not awake:  # all failing: probe the one that rests least
                    awake = [min(self.servers, key=lambda s: s.resting_until)]
                free = [s for s in awake if s.in_flight < self.concurrency]
                if free:
                    other = [s for s in free if s is not avoid] or free
                    server = min(other, key=lambda s: (s.in_flight, self.servers.index(s)))
                    server.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, sum(s.in_flight for s in self.servers))
                    return server
                self._lock.wait(timeout=self.backoff_s)

    def _release(self, server: _Server, failed: bool) -> None:
        with self._lock:
            server.in_flight -= 1
            if failed:
                server.failures += 1
                server.resting_until = time.monotonic() + self.backoff_s * 2 ** min(server.failures - 1, 6)
            else:
                server.failures = 0
                server.resting_until = 0.0
            self._lock.notify_all()

    def _connection(self, server: _Server) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(server.url)
        if conn is None:
            cls = http.client.HTTPSConnection if server.https else http.client.HTTPConnection
            conn = cls(server.host, server.port, timeout=self.timeout_s)
            conns[server.url] = conn
        return conn

    def _post(self, server: _Server, route: str, payload: bytes) -> dict[str, Any]:
        conn = self._connection(server)
        try:
            conn.request("POST", server.path + route, body=payload, headers=self.headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RequestFailed(f"{server.url}: {type(exc).__name__}: {exc}", retry=True) from exc
        if response.status != 200:
            text = data[:300].decode(errors="replace")
            raise RequestFailed(f"{server.url}{route}: HTTP {response.status}: {text}", response.status in RETRY_STATUS)
        try:
            parsed: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise RequestFailed(f"{server.url}{route}: not JSON: {data[:200]!r}", retry=True) from exc
        return parsed

    def _one(self, request: GenerationRequest) -> GenerationResult:
        route, body = self._body(request)
        payload = json.dumps(body).encode()
        started = time.perf_counter()
        server: _Server | None = None
        for attempt in range(self.retries + 1):
            server = self._acquire(avoid=server)
            try:
                reply = self._post(server, route, payload)
            except RequestFailed as exc:
                self._release(server, failed=True)
                if not exc.retry or attempt == self.retries:
                    raise StillError(f"request {request.query_id}#{request.sample_idx} failed: {exc}") from exc
                time.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
                continue
            self._release(server, failed=False)
            return self._result(request, reply, time.perf_counter() - started)
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, request: GenerationRequest, reply: dict[str, Any], latency: float) -> GenerationResult:
        try:
            choice = reply["choices"][0]
            text = choice["text"] if "text" in choice else choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise StillError(f"unexpected reply from the server: {str(reply)[:200]}") from exc
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = reply.get("usage") or {}
        if request.params.stop and (cut := cut_at_stop(text or "", request.params.stop)) is not None:
            text, finish = cut, "stop"
        return GenerationResult(
            text=text or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=finish,
            seed=request.seed,
            model=self.model,
            latency_s=round(latency, 4),
        )

    # -- the interface ---------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """Requests this engine runs at once (all servers)."""
        return self.concurrency * len(self.servers)

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Start one request; the future holds its result. For callers that keep several engines
        (models) or a stream longer than one batch busy from one loop; keep about ``2 * slots``
        pending so every slot has its next request ready."""
        return self._pool.submit(self._one, request)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[GenerationRequest, GenerationResult]]:
        """Keep every server's slots busy; yield results as they complete."""
        limit = 2 * self.slots
        pending: dict[Future[GenerationResult], GenerationRequest] = {}
        source = iter(requests)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < limit:
                    request = next(source, None)
                    if request is None:
                        exhausted = True
                        break
                    pending[self.submit(request)] = request
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
