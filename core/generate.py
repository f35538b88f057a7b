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

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from still.core.engines import Engine, GenerationRequest, GenerationResult, SamplingParams, open_engine, request_seed
from still.core.errors import BadInput
from still.core.fields import Fields, get_path, is_missing
from still.core.journal import Journal
from still.core.jsonl import Record
from still.core.prompts import PromptStyle
from still.core.stats import RunStats
from still.core.verify import PASSING, VerifyConfig, verify_records

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

    def run(self, records: Iterable[Record]) -> Iterator[bytes]:
        """Yield the output lines, window by window, in the fixed order."""
        window: list[_Query] = []
        for rec in records:
            query = self._query(rec)
            if query is not None:
                window.append(query)
            if len(window) >= self.config.window:
                yield from self._window(window)
                window = []
        if window:
            yield from self._window(window)

    # -- one window ------------------------------------------------------------------------

    def _window(self, queries: list[_Query]) -> Iterator[bytes]:
        config = self.config
        if config.until_verified:
            for attempt in range(config.until_verified):
                open_pairs = [(q, m) for q in queries for m in config.models if m not in q.passed]
                if not open_pairs:
                    break
                self._fill([(q, m, attempt) for q, m in open_pairs], verify=True)
        else:
            self._fill([(q, m, i) for q in queries for m in config.models for i in range(config.samples)], verify=False)
        for query in queries:
            for model in config.models:
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
            seed = request_seed(self.config.seed, query.qid, idx)
            request = GenerationRequest(
                messages=query.messages,
                prefill=self.config.style.prefill,
                query_id=query.qid,
                sample_idx=idx,
                seed=seed,
                params=self.config.params,
            )
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
        """Each model's results; models served over HTTP run at the same time (one thread each
        drives its engine), local models one after the other (they share the device)."""
        remote = self.config.engine == "openai" and len(by_model) > 1
        if not remote:
            for model, requests in by_model.items():
                for request, result in self.engine(model).generate(requests):
                    yield model, request, result
            return
        engines = {model: self.engine(model) for model in by_model}
        results: queue.Queue[tuple[str, GenerationRequest, GenerationResult] | BaseException | None] = queue.Queue(64)
        stop = threading.Event()

        def drive(model: str, requests: list[GenerationRequest]) -> None:
            try:
                for request, result in engines[model].generate(requests):
                    if stop.is_set():
                        return
                    results.put((model, request, result))
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                results.put(exc)
            finally:
                results.put(None)

        threads = [threading.Thread(target=drive, args=item, daemon=True) for item in by_model.items()]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                item = results.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            while any(t.is_alive() for t in threads):  # unblock producers waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    results.get(timeout=0.1)

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
        assert self.config.verify is not None
        sub = RunStats("verify")  # a record the verify core cannot use fails the run (BadInput)
        verified = list(verify_records(recs, self.config.verify, sub))
        for rec in verified:
            self.verdicts[str(rec.data["verify"].get("verdict"))] += 1
        return verified


def _passed_record(rec: Record) -> bool:
    return rec.data.get("verify", {}).get("verdict") in PASSING


def _passed(line: bytes) -> bool:
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
