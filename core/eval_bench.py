"""Benchmarks for ``still eval``: problems with gold answers, read the way each benchmark stores them.

A benchmark is a file (JSONL, a JSON list, or Parquet with the ``parquet`` extra) or a built-in
name loaded with ``datasets`` when online. Gold answers:

- an ``answer`` field (AIME's integers, MATH-500's ``answer``); GSM8K's ``answer`` is a worked
  solution ending in ``#### 18``: the text after ``####`` is the gold (thousands commas removed);
- otherwise the last ``\\boxed{}`` of a ``solution`` field (MATH);
- code benchmarks keep their tests (``test``/``tests``/``test_code``, HumanEval's ``entry_point``).

Every benchmark is fingerprinted: the sha256 of its rows, each serialised as canonical JSON (sorted
keys), so two copies with the same rows in the same order have the same checksum whatever their
file format or key order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from still.core.decontam.benchmarks import load_hub_split, parse_against, rows_from_file
from still.core.errors import BadInput, UsageError

QUESTION_FIELDS = ("problem", "question", "query", "prompt", "Question")
ANSWER_FIELDS = ("answer", "final_answer", "gold", "target")
ID_FIELDS = ("id", "unique_id", "task_id", "question_id", "problem_id")
SPLIT_FIELDS = ("level", "subject", "difficulty", "type", "category")
TEST_FIELDS = ("tests", "test", "test_code")

# Samples per problem by default (R1 convention: 64 for AIME; MATH-500 needs fewer for the same
# interval width because it has 500 problems). ``-k`` overrides.
DEFAULT_K = {"aime24": 64, "aime25": 64, "amc23": 32, "math500": 4, "gsm8k": 1, "gpqa_diamond": 8}
FALLBACK_K = 4


@dataclass(frozen=True)
class BuiltinEval:
    dataset: str
    config: str | None
    split: str


BUILTINS: dict[str, BuiltinEval] = {
    "aime24": BuiltinEval("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": BuiltinEval("yentinglin/aime_2025", None, "train"),
    "amc23": BuiltinEval("zwhe99/amc23", None, "test"),
    "math500": BuiltinEval("HuggingFaceH4/MATH-500", None, "test"),
    "gsm8k": BuiltinEval("openai/gsm8k", "main", "test"),
}


@dataclass
class Problem:
    """One benchmark problem: id, question, gold answer (or tests), and split labels."""

    id: str
    question: str
    answer: str | None
    tests: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)


@dataclass
class Benchmark:
    name: str
    source: str
    sha256: str
    problems: list[Problem]

    @property
    def default_k(self) -> int:
        return DEFAULT_K.get(self.name, FALLBACK_K)


def _last_boxed(text: str) -> str | None:
    at = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if at < 0:
        return None
    i = text.index("{", at) + 1
    depth, start = 1, i
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
        i += 1
    return None


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def gold_answer(row: dict[str, Any], answer_field: str | None) -> str | None:
    """The gold answer of a row, read the way its benchmark stores it (see the module docstring)."""
    names = (answer_field,) if answer_field else ANSWER_FIELDS
    for name in names:
        value = row.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str) and value.strip():
            found = _GSM8K_FINAL.search(value)
            if found and "\n" in value:  # a worked solution ending in '#### N' (GSM8K)
                return found.group(1).replace(",", "").strip()
            return value.strip()
    solution = row.get("solution")
    if answer_field is None and isinstance(solution, str):
        return _last_boxed(solution)
    return None


def _pick(row: dict[str, Any], wanted: str | None, names: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted if isinstance(row.get(wanted), str) else None
    return next((n for n in names if isinstance(row.get(n), str) and row[n].strip()), None)


def problems_from_rows(
    rows: Iterator[tuple[int, Any]], source: str, question_field: str | None, answer_field: str | None
) -> tuple[list[Problem], str]:
    """Problems and the sha256 of the rows (canonical JSON, sorted keys)."""
    digest = hashlib.sha256()
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, (line, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise BadInput(source, line, f"expected a JSON object, got {type(row).__name__}")
        digest.update(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n")
        qname = _pick(row, question_field, QUESTION_FIELDS)
        if qname is None:
            flag = f"no question field {question_field!r}" if question_field else "no question field"
            raise BadInput(
                source,
                line,
                f"{flag} (looked for {', '.join(QUESTION_FIELDS)}; keys: {', '.join(row)}); "
                "name it with --question-field",
            )
        tests = next((row[n] for n in TEST_FIELDS if row.get(n)), None)
        answer = gold_answer(row, answer_field)
        if answer is None and tests is None:
            raise BadInput(
                source,
                line,
                f"no gold answer (looked for {', '.join(ANSWER_FIELDS)}, a boxed solution, "
                f"or tests; keys: {', '.join(row)}); name it with --answer-field",
            )
        pid = next((str(row[n]) for n in ID_FIELDS if isinstance(row.get(n), (str, int))), str(index))
        if pid in seen:
            raise BadInput(source, line, f"problem id {pid!r} appears twice")
        seen.add(pid)
        extra = {k: row[k] for k in ("entry_point", "prompt") if k in row and k != qname}
        splits = {k: str(row[k]) for k in SPLIT_FIELDS if isinstance(row.get(k), (str, int))}
        problems.append(Problem(pid, row[qname], answer, tests, extra, splits))
    if not problems:
        raise BadInput(source, 0, "no benchmark problems")
    return problems, digest.hexdigest()


def load_builtin(name: str, question_field: str | None, answer_field: str | None) -> Benchmark:
    spec = BUILTINS[name]
    hint = (
        f"built-in benchmark {name!r} ({spec.dataset}) needs network access and the 'hub' extra "
        f"(pip install 'still[hub]'){{why}}; or pass a local copy: --bench path/to/{name}.jsonl"
    )
    ds = load_hub_split(spec.dataset, spec.config, spec.split, None, hint, " (datasets is not installed)")
    source = f"hf:{spec.dataset}" + (f"/{spec.config}" if spec.config else "") + f":{spec.split}"
    problems, sha = problems_from_rows(enumerate(ds, 1), source, question_field, answer_field)
    return Benchmark(name, source, sha, problems)


def parse_bench_specs(specs: tuple[str, ...]) -> list[tuple[str, str]]:
    """``--bench`` values (repeatable, comma-separated) as (name, path or built-in name), read the
    way ``decontam --against`` reads its values (``NAME=PATH`` names one)."""
    return parse_against(specs, "--bench", BUILTINS.keys())


def load_benchmarks(
    specs: tuple[str, ...], question_field: str | None = None, answer_field: str | None = None
) -> list[Benchmark]:
    out = []
    for name, target in parse_bench_specs(specs):
        path = Path(target)
        if path.is_file():
            problems, sha = problems_from_rows(rows_from_file(path), str(path), question_field, answer_field)
            out.append(Benchmark(name, str(path), sha, problems))
        elif target in BUILTINS:
            out.append(load_builtin(target, question_field, answer_field))
        else:
            known = ", ".join(sorted(BUILTINS))
            raise UsageError(f"--bench {target}: no such file, and not a built-in name ({known})")
    return out
