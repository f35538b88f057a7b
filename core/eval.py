"""``still eval``: score samples per benchmark problem with honest statistics and provenance.

Input: per-sample records (one response each) carrying a benchmark name, a problem id, the gold
answer (or tests) and the response; ``still eval run`` makes them through the engines, ``still eval
score`` reads them from any harness. Each record is verified with the verify core (free-form
extraction by default, the sandbox for code) and written back with ``verify``; at the end one
summary line per (benchmark, model):

    {"eval": "summary", benchmark, model, k, n_problems, avg_at_k, pass_at_k: {"1": ..., "<k>": ...},
     cons_at_k, ci95, sampling_se, truncation_rate, no_answer_rate, tokens: {mean, p90},
     verdicts, splits, fingerprint}

Honest accounting: truncated samples and samples without an answer keep their own verdicts
(``truncated``, ``no_answer``) and rates; they are never folded into ``wrong``, although they do
not count as correct. A problem with fewer than k samples fails the run (exit 1, naming the
problems): a metric averaged over a silently smaller sample count is the bug this tool exists to
prevent. Samples beyond k (by sample index) are written but not counted, and the summary says how
many there were.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from still.core.errors import StillError
from still.core.eval_stats import (
    bootstrap_ci,
    majority,
    mean,
    pass_at_k,
    pass_at_k_points,
    percentile,
    sampling_se,
)
from still.core.fields import get_path, is_missing
from still.core.jsonl import Record
from still.core.stats import RunStats
from still.core.verify import PASSING, VerifyConfig, verify_records

SUMMARY_MARK = "summary"


@dataclass(frozen=True)
class ScoreConfig:
    """How samples are grouped and scored."""

    verify: VerifyConfig = field(default_factory=VerifyConfig)
    k: int | None = None  # None: the number of samples each problem has (all must agree)
    benchmark_field: str = "benchmark"
    default_benchmark: str = "bench"
    problem_field: str = "id"
    model_field: str = "model"
    sample_field: str = "sample_idx"
    tokens_field: str = "n_tokens"
    split_fields: tuple[str, ...] = ("level", "subject", "difficulty")
    seed: int = 0
    resamples: int = 10_000
    reverify: bool = True  # False: trust a ``verify`` the record already carries
    fingerprint: dict[str, Any] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)  # benchmark -> sha256 of its rows
    excluded: dict[str, int] = field(default_factory=dict)  # benchmark -> problems left out (--clean-only)


@dataclass
class _Sample:
    sample_idx: int
    order: int
    correct: bool
    verdict: str
    vote: str | None
    tokens: int | None


@dataclass
class _Group:
    """All samples of one (benchmark, model): per problem, its samples and split labels."""

    problems: dict[str, list[_Sample]] = field(default_factory=dict)
    splits: dict[str, dict[str, str]] = field(default_factory=dict)
    sampling: dict[str, set[str]] = field(default_factory=dict)


def vote_key(extracted: Any) -> str | None:
    """The form answers are compared in for cons@k: exact numbers by value, else the normal form."""
    if not isinstance(extracted, str) or not extracted.strip():
        return None
    from still.core.verify_math import answer_key, exact_number

    key = answer_key(extracted)
    number = exact_number(key)
    return f"={number.value}" if number is not None else key


def _value(rec: Record, path: str) -> Any:
    value = get_path(rec.data, path)
    return None if is_missing(value) else value


def _sample_of(rec: Record, config: ScoreConfig, order: int) -> _Sample:
    result = rec.data.get("verify")
    if not isinstance(result, dict):
        raise StillError(f"{rec.where}: no verify result")
    verdict = str(result.get("verdict"))
    idx = _value(rec, config.sample_field)
    tokens = _value(rec, config.tokens_field)
    return _Sample(
        sample_idx=idx if isinstance(idx, int) and not isinstance(idx, bool) else order,
        order=order,
        correct=verdict in PASSING,
        verdict=verdict,
        vote=vote_key(result.get("extracted")) if verdict not in ("truncated", "no_answer") else None,
        tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
    )


def score_records(records: Iterable[Record], config: ScoreConfig, stats: RunStats) -> Iterator[Record]:
    """Verify and write every sample (input order), then yield one summary record per (benchmark, model)."""
    groups: dict[tuple[str, str], _Group] = {}
    order = 0

    def remember(recs: Iterable[Record]) -> Iterator[Record]:
        nonlocal order
        for rec in recs:
            bench = _value(rec, config.benchmark_field)
            bench = str(bench) if bench is not None else config.default_benchmark
            model = _value(rec, config.model_field)
            pid = _value(rec, config.problem_field)
            if pid is None:
                stats.reject(rec, f"no problem id field ({config.problem_field}); name it with --id-field")
                continue
            group = groups.setdefault((bench, str(model) if model is not None else "-"), _Group())
            sample = _sample_of(rec, config, order)
            order += 1
            group.problems.setdefault(str(pid), []).append(sample)
            labels = group.splits.setdefault(str(pid), {})
            for name in config.split_fields:
                value = _value(rec, name)
                if isinstance(value, (str, int)) and not isinstance(value, bool):
                    labels.setdefault(name, str(value))
            for name in ("temperature", "top_p", "max_tokens", "template"):
                value = _value(rec, name)
                if value is not None:
                    group.sampling.setdefault(name, set()).add(orjson.dumps(value).decode())
            yield rec

    if config.reverify:
        yield from remember(verify_records(records, config.verify, stats))
    else:
        yield from remember(_trusted(records, config, stats))
    summaries = [summarise(bench, model, group, config) for (bench, model), group in sorted(groups.items())]
    stats.extra["eval"] = [
        {k: s[k] for k in ("benchmark", "model", "k", "avg_at_k", "ci95", "cons_at_k")} for s in summaries
    ]
    for summary in summaries:
        stats.created += 1  # made here, not read: the balance counts them on the input side
        yield Record(summary, None, "<eval>", 0)


def _trusted(records: Iterable[Record], config: ScoreConfig, stats: RunStats) -> Iterator[Record]:
    """Records that already carry ``verify`` pass as they are; the others are verified."""
    pending: list[Record] = []
    for rec in records:
        if isinstance(rec.data.get("verify"), dict):
            if pending:
                yield from verify_records(pending, config.verify, stats)
                pending = []
            yield rec
        else:
            pending.append(rec)
    if pending:
        yield from verify_records(pending, config.verify, stats)


def _counted(samples: list[_Sample], k: int) -> list[_Sample]:
    return sorted(samples, key=lambda s: (s.sample_idx, s.order))[:k]


def summarise(bench: str, model: str, group: _Group, config: ScoreConfig) -> dict[str, Any]:
    sizes = {pid: len(s) for pid, s in group.problems.items()}
    k = config.k if config.k is not None else max(sizes.values())
    short = sorted(pid for pid, n in sizes.items() if n < k)
    if short:
        listed = ", ".join(f"{pid} ({sizes[pid]})" for pid in short[:5]) + (" …" if len(short) > 5 else "")
        raise StillError(
            f"{bench} / {model}: {len(short)} of {len(sizes)} problems have fewer than k={k} samples: {listed}; "
            "generate the missing samples (eval run --resume) or score with a smaller -k"
        )
    pids = sorted(group.problems)
    counted = {pid: _counted(group.problems[pid], k) for pid in pids}
    correct = [sum(s.correct for s in counted[pid]) for pid in pids]
    per_problem = [c / k for c in correct]
    all_samples = [s for pid in pids for s in counted[pid]]
    n_samples = len(all_samples)
    verdicts: dict[str, int] = {}
    for s in all_samples:
        verdicts[s.verdict] = verdicts.get(s.verdict, 0) + 1
    cons = []
    for pid in pids:
        samples = counted[pid]
        winner, _ = majority([s.vote for s in samples])
        cons.append(winner is not None and next(s.correct for s in samples if s.vote == winner))
    tokens = sorted(s.tokens for s in all_samples if s.tokens is not None)
    lo, hi = bootstrap_ci(per_problem, config.seed, config.resamples)
    summary: dict[str, Any] = {
        "eval": SUMMARY_MARK,
        "benchmark": bench,
        "model": model,
        "k": k,
        "n_problems": len(pids),
        "n_samples": n_samples,
        "avg_at_k": mean(per_problem),
        "pass_at_k": {str(p): mean([pass_at_k(k, c, p) for c in correct]) for p in pass_at_k_points(k)},
        "cons_at_k": mean([1.0 if ok else 0.0 for ok in cons]),
        "ci95": [lo, hi],
        "sampling_se": sampling_se(per_problem, k),
        "truncation_rate": verdicts.get("truncated", 0) / n_samples,
        "no_answer_rate": verdicts.get("no_answer", 0) / n_samples,
        "tokens": _token_stats(tokens),
        "verdicts": dict(sorted(verdicts.items())),
        "beyond_k": sum(sizes.values()) - n_samples,
        "excluded": config.excluded.get(bench, 0),
        "splits": _splits(pids, per_problem, group, config),
        "fingerprint": {
            **config.fingerprint,
            "dataset_sha256": config.checksums.get(bench),
            "sampling": {name: sorted(values) for name, values in sorted(group.sampling.items())},
            "bootstrap": {"seed": config.seed, "resamples": config.resamples},
        },
    }
    return summary


def _token_stats(tokens: list[int]) -> dict[str, Any]:
    """Mean, p90 and a 20-bin histogram of answer lengths (for the report's plot)."""
    if not tokens:
        return {"mean": None, "p90": None, "histogram": None}
    values = [float(t) for t in tokens]
    lo, hi = values[0], values[-1]
    width = max((hi - lo) / 20, 1.0)
    counts = [0] * 20
    for v in values:
        counts[min(19, int((v - lo) / width))] += 1
    return {
        "mean": mean(values),
        "p90": percentile(values, 0.9),
        "histogram": {"start": lo, "width": width, "counts": counts},
    }


def _splits(pids: list[str], per_problem: list[float], group: _Group, config: ScoreConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in config.split_fields:
        by_value: dict[str, list[float]] = {}
        for pid, p in zip(pids, per_problem):
            value = group.splits.get(pid, {}).get(name)
            if value is not None:
                by_value.setdefault(value, []).append(p)
        if len(by_value) > 1:
            out[name] = {
                value: {
                    "n": len(ps),
                    "avg_at_k": mean(ps),
                    "ci95": list(bootstrap_ci(ps, config.seed, config.resamples)),
                }
                for value, ps in sorted(by_value.items())
            }
    return out


def is_summary(data: dict[str, Any]) -> bool:
    return data.get("eval") == SUMMARY_MARK
