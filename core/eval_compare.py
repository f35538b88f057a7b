"""``still eval compare A B``: the paired difference between two eval runs, with its interval.

Both files are ``still eval`` outputs (per-sample lines with ``verify``, then summary lines). For
each benchmark both runs scored, every problem's pass rate is taken over the first k samples (k
from each run's summary), and the mean of (B - A) over the problems both runs have gets a paired
bootstrap interval (problems resampled together in both runs). The difference is called
distinguishable from zero when its 95% interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from still.core.errors import BadInput
from still.core.eval_stats import BOOTSTRAP_RESAMPLES, paired_difference
from still.core.fields import get_path, is_missing
from still.core.jsonl import Record
from still.core.verify import PASSING


@dataclass
class _Run:
    """Per benchmark: k, model and per problem the (sample index, order, correct) triples."""

    k: dict[str, int] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[str, list[tuple[int, int, bool]]]] = field(default_factory=dict)

    def rates(self, bench: str) -> dict[str, float]:
        k = self.k[bench]
        out = {}
        for pid, samples in self.samples.get(bench, {}).items():
            counted = sorted(samples)[:k]
            out[pid] = sum(ok for _, _, ok in counted) / k
        return out


def read_run(records: Iterable[Record], problem_field: str = "id", benchmark_field: str = "benchmark") -> _Run:
    run = _Run()
    for order, rec in enumerate(records):
        data = rec.data
        if data.get("eval") == "summary":
            bench = str(data.get("benchmark"))
            run.k[bench] = int(data["k"])
            run.model[bench] = str(data.get("model"))
            continue
        result = data.get("verify")
        pid = get_path(data, problem_field)
        if not isinstance(result, dict) or is_missing(pid):
            raise BadInput(rec.source, rec.line, "not a still eval sample line (needs verify and a problem id)")
        bench_value = get_path(data, benchmark_field)
        bench = "bench" if is_missing(bench_value) else str(bench_value)
        idx = data.get("sample_idx")
        idx = idx if isinstance(idx, int) and not isinstance(idx, bool) else order
        ok = result.get("verdict") in PASSING
        run.samples.setdefault(bench, {}).setdefault(str(pid), []).append((idx, order, ok))
    return run


def compare_runs(a: _Run, b: _Run, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict[str, Any]]:
    """One result per benchmark that both runs summarised."""
    out = []
    for bench in sorted(set(a.k) & set(b.k)):
        ra, rb = a.rates(bench), b.rates(bench)
        common = sorted(set(ra) & set(rb))
        diff = paired_difference([ra[p] for p in common], [rb[p] for p in common], seed, resamples)
        out.append(
            {
                "eval": "compare",
                "benchmark": bench,
                "a": {"model": a.model[bench], "k": a.k[bench], "avg_at_k": _mean([ra[p] for p in common])},
                "b": {"model": b.model[bench], "k": b.k[bench], "avg_at_k": _mean([rb[p] for p in common])},
                "n_problems": diff.n,
                "only_in_a": len(set(ra) - set(rb)),
                "only_in_b": len(set(rb) - set(ra)),
                "delta": diff.delta,
                "ci95": list(diff.ci95),
                "distinguishable": diff.distinguishable,
                "bootstrap": {"seed": seed, "resamples": resamples},
            }
        )
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
