"""A model as the judge of free-form answers (``still verify --judge MODEL``).

After the rule-based checks, answers they could not confirm (verdict ``wrong``, ``no_answer`` or
``timeout``; every answer with ``judge_all``) go to a judge model through the engines, as
DeepDistill re-checks Math-Verify's "wrong" with Qwen2.5-7B-Instruct. Each answer is judged
``samples`` times (per-sample seeds from the run seed, the query id, the response and the sample
index) and the votes are aggregated as in Heimdall (arXiv 2504.10337): ``majority`` (more yes
than no; a tie is wrong) or ``pessimistic`` (any no is wrong). The judge's verdict is parsed from
its last ``\\boxed{yes|no}`` (or correct/incorrect, true/false) or a ``Verdict: ...`` line after
its thinking; a sample with neither is unparsed, and an answer with no parsed sample gets the
verdict ``error``. The judge's reasoning (the agreeing sample's text before its verdict) goes in
``verify.reason``; ``verify.judge`` records the model, the votes and the aggregation. Code is
never judged (its tests decide).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import xxhash

from still.core.engines import GenerationRequest, SamplingParams, open_engine, request_seed
from still.core.errors import BadInput, UsageError
from still.core.fields import Fields, get_path, is_missing
from still.core.jsonl import Record
from still.core.stats import RunStats

AGGREGATES = ("majority", "pessimistic")
JUDGED_VERDICTS = frozenset({"wrong", "no_answer", "timeout"})
JUDGED_VERDICTS_ALL = JUDGED_VERDICTS | {"correct", "error"}
REASON_MAX_CHARS = 4000

PROMPT = """You are checking a student's answer against the reference answer.

Problem:
{query}

Reference answer:
{answer}

Student's answer:
{response}

Is the student's final answer correct, that is, equivalent to the reference answer? Explain \
briefly, then end with one line: \\boxed{{yes}} or \\boxed{{no}}."""

_WORDS = r"(yes|no|correct|incorrect|true|false|wrong|right)"
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text\s*\{\s*)?" + _WORDS + r"\s*\}?\s*\}", re.IGNORECASE)
_LINE = re.compile(
    r"^[\s*#>_-]*(?:final\s+)?(?:verdict|judg(?:e)?ment|decision|answer)\s*[:：]\s*[*_\s]*" + _WORDS + r"\b",
    re.IGNORECASE | re.MULTILINE,
)
_YES = frozenset({"yes", "correct", "true", "right"})


def parse_verdict(text: str) -> tuple[bool | None, str]:
    """The judge's vote (True yes, False no, None unparsed) and its reasoning before the vote.

    Looks after the last ``</think>`` when there is one; the last marker wins (a judge may quote
    the format before it answers).
    """
    start = text.rfind("</think>")
    tail_at = start + len("</think>") if start >= 0 else 0
    tail = text[tail_at:]
    best: re.Match[str] | None = None
    for pattern in (_BOXED, _LINE):
        for m in pattern.finditer(tail):
            if best is None or m.start() > best.start():
                best = m
    if best is None:
        return None, text.strip()
    reasoning = text[: tail_at + best.start()].strip()
    return best.group(1).lower() in _YES, reasoning


def aggregate(votes: list[bool | None], how: str) -> bool | None:
    """Heimdall's aggregations over parsed votes; None when no vote parsed."""
    yes = sum(1 for v in votes if v is True)
    no = sum(1 for v in votes if v is False)
    if yes + no == 0:
        return None
    if how == "pessimistic":
        return no == 0
    return yes > no


@dataclass(frozen=True)
class JudgeConfig:
    model: str
    engine: str = "hf"
    engine_options: dict[str, Any] = field(default_factory=dict)
    samples: int = 1
    how: str = "majority"
    seed: int = 0
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=2048))
    judge_all: bool = False
    fields: Fields = field(default_factory=Fields)
    answer_field: str = "answer"
    chunk: int = 256  # records whose judge requests go to the engine together

    def validate(self) -> None:
        if self.how not in AGGREGATES:
            raise UsageError(f"--judge-aggregate must be one of {', '.join(AGGREGATES)}")
        if self.samples < 1:
            raise UsageError("--judge-samples must be at least 1")


def _final_part(response: str) -> str:
    """What the judge reads of a response: the part after the thinking, when it is closed."""
    end = response.rfind("</think>")
    return response[end + len("</think>") :].strip() if end >= 0 else response.strip()


class _Judge:
    def __init__(self, config: JudgeConfig, stats: RunStats) -> None:
        config.validate()
        self.config = config
        self.stats = stats
        self.verdicts = JUDGED_VERDICTS_ALL if config.judge_all else JUDGED_VERDICTS
        self.summary: dict[str, Any] = {"model": config.model, "samples": config.samples, "aggregate": config.how}
        self.counts = {"judged": 0, "overturned": 0, "unparsed_samples": 0, "no_verdict": 0}

    def wants(self, rec: Record) -> bool:
        verify = rec.data.get("verify")
        if not isinstance(verify, dict) or verify.get("verdict") not in self.verdicts:
            return False
        method = str(verify.get("method", ""))
        return method != "code" and not method.startswith("reward/")  # no reference to judge against

    def requests(self, rec: Record) -> list[GenerationRequest]:
        cfg = self.config
        answer = get_path(rec.data, cfg.answer_field)
        answer_text = "" if is_missing(answer) or answer is None else str(answer)
        response = cfg.fields.response(rec)
        try:
            query, rid = cfg.fields.query(rec), cfg.fields.record_id(rec)
        except BadInput:  # the rules needed no query; the judge does without one
            query, rid = "(not given)", ""
        content = PROMPT.format(query=query, answer=answer_text, response=_final_part(response))
        key = f"{rid}\x1f{xxhash.xxh3_64_hexdigest(response.encode())}"
        messages = ({"role": "user", "content": content},)
        return [
            GenerationRequest(
                messages=messages, query_id=key, sample_idx=j, seed=request_seed(cfg.seed, key, j), params=cfg.params
            )
            for j in range(cfg.samples)
        ]

    def decide(self, rec: Record, texts: list[str]) -> None:
        parsed = [parse_verdict(t) for t in texts]
        votes = [v for v, _ in parsed]
        verdict = aggregate(votes, self.config.how)
        unparsed = sum(1 for v in votes if v is None)
        self.counts["judged"] += 1
        self.counts["unparsed_samples"] += unparsed
        verify = rec.changed()["verify"]
        before = verify.get("verdict")
        if verdict is None:
            self.counts["no_verdict"] += 1
            first = texts[0][:200] if texts else ""
            new, reason = "error", f"the judge gave no parseable verdict in {len(texts)} sample(s); first: {first!r}"
        else:
            new = "correct" if verdict else "wrong"
            reason = next(r for v, r in parsed if v is verdict)
            if len(reason) > REASON_MAX_CHARS:
                reason = reason[:REASON_MAX_CHARS] + " [...]"
        if new != before:
            self.counts["overturned"] += 1
            verdicts = self.stats.extra.get("verdicts")
            if isinstance(verdicts, dict):
                verdicts[before] = verdicts.get(before, 0) - 1
                verdicts[new] = verdicts.get(new, 0) + 1
        yes = sum(1 for v in votes if v is True)
        verify.update(
            verdict=new,
            score=1.0 if new == "correct" else 0.0,
            method="judge",
            reason=reason,
            judge={
                "model": self.config.model,
                "votes": {"yes": yes, "no": len(votes) - yes - unparsed, "unparsed": unparsed},
                "aggregate": self.config.how,
                "rule_verdict": before,
            },
        )

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        cfg = self.config
        with open_engine(cfg.engine, cfg.model, **cfg.engine_options) as engine:
            chunk: list[Record] = []
            for rec in records:
                chunk.append(rec)
                if len(chunk) >= cfg.chunk:
                    yield from self._judge_chunk(engine, chunk)
                    chunk = []
            yield from self._judge_chunk(engine, chunk)
        verdicts = self.stats.extra.get("verdicts")
        if isinstance(verdicts, dict):
            self.stats.extra["verdicts"] = {k: v for k, v in sorted(verdicts.items()) if v}
        self.stats.extra["judge"] = {**self.summary, **self.counts}

    def _judge_chunk(self, engine: Any, chunk: list[Record]) -> Iterator[Record]:
        requests: list[GenerationRequest] = []
        owner: dict[int, int] = {}
        for i, rec in enumerate(chunk):
            if self.wants(rec):
                for req in self.requests(rec):
                    owner[id(req)] = i
                    requests.append(req)
        texts: dict[int, list[tuple[int, str]]] = {}
        if requests:
            for req, result in engine.generate(requests):
                texts.setdefault(owner[id(req)], []).append((req.sample_idx, result.text))
        for i, rec in enumerate(chunk):
            if i in texts:
                self.decide(rec, [t for _, t in sorted(texts[i])])
            yield rec


def judge_records(records: Iterable[Record], config: JudgeConfig, stats: RunStats) -> Iterator[Record]:
    """Yield verified records in order, the ones the rules could not confirm judged by the model."""
    return _Judge(config, stats).run(records)
