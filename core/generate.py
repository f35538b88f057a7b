"""``still generate``: k responses per query from one or more models, resumable and seeded.

Queries are read in windows; every (query, model, sample) in a window becomes one engine request
with its own seed (:func:`~still.core.engines.request_seed`), all of a model's requests go to its
engine at once (so it can batch them), and the window's lines are written in a fixed order:
input order, then ``--model`` order, then sample index. The output is therefore the same for any
batch size, engine parallelism or resume.

With a :class:`~still.core.journal.Journal`, each response is journalled as it finishes and a
resumed run asks the engine only for what the journal lacks. With ``until_verified`` a query is
sampled in rounds until the verify core passes one of its responses or the attempts run out;
every attempt is written with its verdict.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson

from still.core.engines import Engine, GenerationRequest, GenerationResult, SamplingParams, open_engine, request_seed
from still.core.errors import BadInput
from still.core.fields import Fields, get_path, is_missing
from still.core.journal import Journal
from still.core.jsonl import Record
from still.core.prompts import PromptStyle
from still.core.stats import RunStats

if TYPE_CHECKING:
    from still.core.engines.openai import OpenAIEngine

    # the verify core compiles many regular expressions at import: loaded only for --until-verified
    from still.core.verify import VerifyConfig

Key = tuple[str, str, int]  # (query id, model, sample index)


@dataclass(frozen=True)
class GenerateConfig:
    models: tuple[str, ...]
    engine: str = "hf"
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per model, over engine_options
    samples: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    style: PromptStyle = field(default_factory=PromptStyle)
    fields: Fields = field(default_factory=Fields)
    until_verified: int | None = None
    verify: VerifyConfig | None = None
    window: int = 64  # queries read before their requests go to the engines

    def fingerprint(self) -> dict[str, Any]:
        """What decides the output lines: a journal from a run with another fingerprint is refused."""
        return {
            "models": list(self.models),
            "samples": self.samples,
            "until_verified": self.until_verified,
            "sampling": self.params.as_record(),
            "seed": self.seed,
            "prompt": self.style.as_record(),
            "id_field": self.fields.id_path,
        }


@dataclass
class _Query:
    rec: Record
    qid: str
    messages: tuple[dict[str, Any], ...]
    done: dict[Key, bytes] = field(default_factory=dict)  # finished lines not in the journal
    passed: set[str] = field(default_factory=set)  # models with a verified response


# windows the openai engine keeps open at once: the finished lines of later windows wait in memory
# (or in the journal) until the earliest window's slowest response is in
REMOTE_WINDOWS = 4


@dataclass
class _OpenWindow:
    queries: list[_Query]
    remaining: int = 0  # requests sent, not yet answered
    sealed: bool = False  # every request of the window has been sent


class Progress:
    """Queries, responses, tokens/s and ETA on stderr (the caller enables it only on a TTY)."""

    def __init__(self, write: Callable[[str], None] | None, total_queries: int | None) -> None:
        self.write = write
        self.total = total_queries
        self.started = time.monotonic()
        self.last = 0.0
        self.queries = self.responses = self.tokens = 0

    def update(self, queries: int = 0, responses: int = 0, tokens: int = 0) -> None:
        self.queries += queries
        self.responses += responses
        self.tokens += tokens
        now = time.monotonic()
        if self.write is None or now - self.last < 0.5:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        line = f"still generate: {self.queries} queries, {self.responses} responses, {self.tokens / elapsed:.1f} tok/s"
        if self.total and self.queries:
            eta = elapsed * (self.total - self.queries) / self.queries
            line += f", ETA {eta:.0f} s"
        self.write(f"\r{line}\033[K")

    def close(self) -> None:
        if self.write is not None:
            self.write("\r\033[K")


class Generator:
    """Runs the windows; engines open on first use and close with :meth:`close`."""

    def __init__(
        self,
        config: GenerateConfig,
        stats: RunStats,
        journal: Journal | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.journal = journal
        self.progress = progress or Progress(None, None)
        self.engines: dict[str, Engine] = {}
        self.finish_reasons: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.seen: dict[str, str] = {}
        self.tokens = 0
        stats.extra.update(responses=0, resumed=journal.resumed if journal else 0)

    def engine(self, model: str) -> Engine:
        if model not in self.engines:
            options = {**self.config.engine_options, **self.config.model_options.get(model, {})}
            self.engines[model] = open_engine(self.config.engine, model, **options)
        return self.engines[model]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.stats.extra["finish_reasons"] = dict(sorted(self.finish_reasons.items()))
        self.stats.extra["completion_tokens"] = self.tokens
        if self.config.until_verified:
            self.stats.extra["verdicts"] = dict(sorted(self.verdicts.items()))
        self.progress.close()

    # -- input -----------------------------------------------------------------------------

    def _query(self, rec: Record) -> _Query | None:
        fields, style = self.config.fields, self.config.style
        try:
            qid = fields.record_id(rec)
            chat = get_path(rec.data, "messages") if fields.query_path is None else None
            messages = style.from_messages(chat) if isinstance(chat, list) else None
            if messages is None:
                messages = style.from_query(fields.query(rec))
        except BadInput as exc:
            self.stats.reject(rec, exc.message)
            return None
        if qid in self.seen:
            self.stats.reject(rec, f"duplicate id {qid!r} (first at {self.seen[qid]}): ids must be unique")
            return None
        self.seen[qid] = rec.where
        return _Query(rec, qid, messages)

    def _windows(self, records: Iterable[Record]) -> Iterator[list[_Query]]:
        window: list[_Query] = []
        for rec in records:
            query = self._query(rec)
            if query is not None:
                window.append(query)
            if len(window) >= self.config.window:
                yield window
                window = []
        if window:
            yield window

    def run(self, records: Iterable[Record]) -> Iterator[bytes]:
        """Yield the output lines, window by window, in the fixed order."""
        if self.config.engine == "openai" and not self.config.until_verified:
            yield from self._run_remote(records)
            return
        for window in self._windows(records):
            self._generate_window(window)
            yield from self._lines(window)

    # -- one window ------------------------------------------------------------------------

    def _generate_window(self, queries: list[_Query]) -> None:
        config = self.config
        if config.until_verified:
            for attempt in range(config.until_verified):
                open_pairs = [(q, m) for q in queries for m in config.models if m not in q.passed]
                if not open_pairs:
                    break
                self._fill([(q, m, attempt) for q, m in open_pairs], verify=True)
        else:
            self._fill(self._wanted(queries), verify=False)

    def _wanted(self, queries: list[_Query]) -> list[tuple[_Query, str, int]]:
        """Every (query, model, sample index) of a window the journal lacks, in output order."""
        wanted = [(q, m, i) for q in queries for m in self.config.models for i in range(self.config.samples)]
        if self.journal is None:
            return wanted
        return [(q, m, i) for q, m, i in wanted if (q.qid, m, i) not in self.journal]

    def _lines(self, queries: list[_Query]) -> Iterator[bytes]:
        """The output lines of a finished window: input order, then model, then sample index."""
        for query in queries:
            for model in self.config.models:
                for key in self._keys(query, model):
                    yield query.done.pop(key) if key in query.done else self._journalled(key)
            self.stats.written += 1
            self.progress.update(queries=1)

    def _keys(self, query: _Query, model: str) -> Iterator[Key]:
        for idx in range(self.config.until_verified or self.config.samples):
            key = (query.qid, model, idx)
            if key not in query.done and (self.journal is None or key not in self.journal):
                return  # until_verified: the attempts stopped at the first pass
            yield key

    def _journalled(self, key: Key) -> bytes:
        assert self.journal is not None
        return self.journal.get(key)

    def _request(self, query: _Query, idx: int) -> GenerationRequest:
        return GenerationRequest(
            messages=query.messages,
            prefill=self.config.style.prefill,
            query_id=query.qid,
            sample_idx=idx,
            seed=request_seed(self.config.seed, query.qid, idx),
            params=self.config.params,
        )

    def _fill(self, wanted: list[tuple[_Query, str, int]], verify: bool) -> None:
        """Generate every wanted (query, model, index) the journal lacks; with ``verify``, mark
        the (query, model) pairs that passed (journalled attempts count too)."""
        by_model: dict[str, list[GenerationRequest]] = {}
        owner: dict[int, _Query] = {}
        for query, model, idx in wanted:
            key = (query.qid, model, idx)
            if self.journal is not None and key in self.journal:
                if verify and _passed(self.journal.get(key)):
                    query.passed.add(model)
                continue
            request = self._request(query, idx)
            by_model.setdefault(model, []).append(request)
            owner[id(request)] = query
        finished: list[tuple[_Query, str, int, Record]] = []
        for model, request, result in self._results(by_model):
            query = owner[id(request)]
            rec = self._output(query, model, request, result)
            if verify:
                finished.append((query, model, request.sample_idx, rec))
            else:
                self._keep(query, model, request.sample_idx, rec)
        if finished:
            # one verify pass per round: its math worker pool starts once, not once per response
            verified = self._verify([rec for _, _, _, rec in finished])
            for (query, model, idx, _), rec in zip(finished, verified):
                if _passed_record(rec):
                    query.passed.add(model)
                self._keep(query, model, idx, rec)

    def _results(
        self, by_model: dict[str, list[GenerationRequest]]
    ) -> Iterator[tuple[str, GenerationRequest, GenerationResult]]:
        """Each model's results: local models one after the other (they share the device), models
        served over HTTP all at once (their requests go out together from one loop)."""
        if self.config.engine != "openai":
            for model, requests in by_model.items():
                for request, result in self.engine(model).generate(requests):
                    yield model, request, result
            return
        work = ((model, request) for model, requests in by_model.items() for request in requests)
        pending: dict[Future[GenerationResult], tuple[str, GenerationRequest]] = {}
        try:
            while True:
                for model, request in itertools.islice(work, max(self._remote_limit() - len(pending), 0)):
                    pending[self._submit(model, request)] = (model, request)
                if not pending:
                    return
                for (model, request), result in _completed(pending):
                    yield model, request, result
        finally:
            _cancel(pending)

    # -- the openai engine: windows overlap ------------------------------------------------

    def _submit(self, model: str, request: GenerationRequest) -> Future[GenerationResult]:
        engine = cast("OpenAIEngine", self.engine(model))
        return engine.submit(request)

    def _remote_limit(self) -> int:
        """Requests kept pending: twice the engines' slots, so no server waits for its next one."""
        slots = sum(getattr(engine, "slots", 1) for engine in self.engines.values())
        return 2 * max(slots, 1)

    def _run_remote(self, records: Iterable[Record]) -> Iterator[bytes]:
        """Windows overlap on the openai engine: the next windows' requests go out while a window
        waits for its slowest responses, so no server idles at a window boundary (with reasoning
        traces one straggler of 32k tokens would hold every other slot idle until it ends). Lines
        still come window by window in the fixed order; at most ``REMOTE_WINDOWS`` are open."""
        windows = self._windows(records)
        open_windows: deque[_OpenWindow] = deque()
        sending: Iterator[tuple[_Query, str, int]] = iter(())
        pending: dict[Future[GenerationResult], tuple[_OpenWindow, _Query, str, GenerationRequest]] = {}
        read_all = False
        try:
            while True:
                while open_windows and open_windows[0].sealed and open_windows[0].remaining == 0:
                    yield from self._lines(open_windows.popleft().queries)
                while len(pending) < self._remote_limit():
                    item = next(sending, None)
                    if item is None:
                        if open_windows:
                            open_windows[-1].sealed = True
                        if read_all or len(open_windows) >= REMOTE_WINDOWS:
                            break
                        queries = next(windows, None)
                        if queries is None:
                            read_all = True
                            break
                        open_windows.append(_OpenWindow(queries))
                        sending = iter(self._wanted(queries))
                        continue
                    query, model, idx = item
                    request = self._request(query, idx)
                    open_windows[-1].remaining += 1
                    pending[self._submit(model, request)] = (open_windows[-1], query, model, request)
                if not pending:
                    if read_all and not any(not w.sealed or w.remaining for w in open_windows):
                        break
                    continue
                for (window, query, model, request), result in _completed(pending):
                    self._keep(query, model, request.sample_idx, self._output(query, model, request, result))
                    window.remaining -= 1
        finally:
            _cancel(pending)
        while open_windows:
            yield from self._lines(open_windows.popleft().queries)

    def _keep(self, query: _Query, model: str, idx: int, rec: Record) -> None:
        key = (query.qid, model, idx)
        if self.journal is not None:
            self.journal.append(key, rec.to_bytes())
        else:
            query.done[key] = rec.to_bytes()

    def _output(self, query: _Query, model: str, request: GenerationRequest, result: GenerationResult) -> Record:
        data = dict(query.rec.data)
        # a verdict in the input judged the response being replaced: keeping it would pass the
        # new response off as verified
        data.pop("verify", None)
        id_path = self.config.fields.id_path
        if "." not in id_path and is_missing(get_path(data, id_path)):
            data[id_path] = query.qid
        data.update(
            response=request.prefill + result.text,
            model=model,
            sample_idx=request.sample_idx,
            finish_reason=result.finish_reason,
            n_tokens=result.completion_tokens,
            prompt_tokens=result.prompt_tokens,
            seed=result.seed,
            sampling=self.config.params.as_record(),
        )
        self.finish_reasons[result.finish_reason] += 1
        self.tokens += result.completion_tokens
        self.stats.extra["responses"] += 1
        self.progress.update(responses=1, tokens=result.completion_tokens)
        return Record(data, None, query.rec.source, query.rec.line)

    def _verify(self, recs: list[Record]) -> list[Record]:
        from still.core.verify import verify_records

        assert self.config.verify is not None
        sub = RunStats("verify")  # a record the verify core cannot use fails the run (BadInput)
        verified = list(verify_records(recs, self.config.verify, sub))
        for rec in verified:
            self.verdicts[str(rec.data["verify"].get("verdict"))] += 1
        return verified


_T = TypeVar("_T")


def _completed(pending: dict[Future[GenerationResult], _T]) -> Iterator[tuple[_T, GenerationResult]]:
    """Wait for at least one pending request; each finished one, removed from ``pending``."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        yield pending.pop(future), future.result()


def _cancel(pending: dict[Future[GenerationResult], Any]) -> None:
    for future in pending:
        future.cancel()


def _passed_record(rec: Record) -> bool:
    from still.core.verify import PASSING

    return rec.data.get("verify", {}).get("verdict") in PASSING


def _passed(line: bytes) -> bool:
    from still.core.verify import PASSING

    data = orjson.loads(line)
    return isinstance(data, dict) and data.get("verify", {}).get("verdict") in PASSING


def journal_key(fields: Fields) -> Callable[[bytes], Hashable]:
    """The (id, model, sample_idx) of a journalled output line."""

    def key(line: bytes) -> Hashable:
        data = orjson.loads(line)
        rec = Record(data, line, "journal", 0)
        return (fields.record_id(rec), str(data["model"]), int(data["sample_idx"]))

    return key


def generate_records(
    records: Iterable[Record],
    config: GenerateConfig,
    stats: RunStats,
    journal: Journal | None = None,
    progress: Progress | None = None,
) -> Iterator[bytes]:
    """The output lines of ``still generate`` for ``records`` (see the module docstring)."""
    generator = Generator(config, stats, journal, progress)
    try:
        yield from generator.run(records)
    finally:
        generator.close()
