"""Benchmarks to screen against: local files (JSONL, JSON list, Parquet) or built-in names."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from still.core.errors import BadInput, StillError, UsageError, require

BENCH_FIELDS = ("problem", "question", "prompt", "query", "text")
ITEM_ID_FIELDS = ("id", "unique_id", "task_id", "question_id", "problem_id")


@dataclass(frozen=True)
class BuiltinBenchmark:
    """A public benchmark known by name, loaded with ``datasets`` when online."""

    dataset: str
    config: str | None
    split: str
    text_field: str
    id_field: str | None
    # Not yet pinned: no commit was verified from this (offline) build. When loaded, the resolved
    # fingerprint and a checksum of the rows go into the manifest.
    revision: str | None = None


BUILTINS: dict[str, BuiltinBenchmark] = {
    "aime24": BuiltinBenchmark("HuggingFaceH4/aime_2024", None, "train", "problem", "id"),
    "aime25": BuiltinBenchmark("yentinglin/aime_2025", None, "train", "problem", "id"),
    "amc23": BuiltinBenchmark("zwhe99/amc23", None, "test", "question", "id"),
    "math500": BuiltinBenchmark("HuggingFaceH4/MATH-500", None, "test", "problem", "unique_id"),
    "gsm8k": BuiltinBenchmark("openai/gsm8k", "main", "test", "question", None),
    "gpqa_diamond": BuiltinBenchmark("Idavidrein/gpqa", "gpqa_diamond", "train", "Question", "Record ID"),
    "humaneval": BuiltinBenchmark("openai/openai_humaneval", None, "test", "prompt", "task_id"),
    "mbpp": BuiltinBenchmark("google-research-datasets/mbpp", "full", "test", "text", "task_id"),
    "livecodebench": BuiltinBenchmark(
        "livecodebench/code_generation_lite", "release_v5", "test", "question_content", "question_id"
    ),
}


@dataclass
class Benchmark:
    """One benchmark's items as loaded: name, where from, and (item id, text) pairs."""

    name: str
    source: str
    sha256: str
    field: str
    items: list[tuple[Any, str]]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pick_field(row: dict[str, Any], wanted: str | None, source: str, line: int) -> str:
    if wanted:
        if not isinstance(row.get(wanted), str):
            raise BadInput(source, line, f"no text field {wanted!r} (--bench-field)")
        return wanted
    for name in BENCH_FIELDS:
        if isinstance(row.get(name), str):
            return name
    raise BadInput(source, line, f"no text field ({', '.join(BENCH_FIELDS)}); name it with --bench-field")


def _item_id(row: dict[str, Any], index: int) -> Any:
    for name in ITEM_ID_FIELDS:
        value = row.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return value
    return index


def rows_from_file(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, row) pairs from JSONL, a JSON list, or Parquet."""
    label = str(path)
    if path.suffix == ".parquet":
        require("pyarrow", "parquet", "Reading a Parquet benchmark file")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise BadInput(label, 0, f"cannot read Parquet: {exc}") from exc
        for i, row in enumerate(table.to_pylist(), 1):
            yield i, row
        return
    data = path.read_bytes()
    head = data.lstrip()[:1]
    if head == b"[":
        try:
            rows = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadInput(label, 0, f"invalid JSON: {str(exc).split(':', 1)[0]}") from exc
        for i, row in enumerate(rows, 1):
            yield i, row
        return
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadInput(label, i, "invalid JSON") from None


def load_benchmark_file(path: Path, name: str, bench_field: str | None) -> Benchmark:
    if not path.is_file():
        raise UsageError(f"--against {path}: no such file")
    items: list[tuple[Any, str]] = []
    field_name: str | None = None
    for index, (line, row) in enumerate(rows_from_file(path)):
        if not isinstance(row, dict):
            raise BadInput(str(path), line, f"expected a JSON object, got {type(row).__name__}")
        if field_name is None:
            field_name = _pick_field(row, bench_field, str(path), line)
        text = row.get(field_name)
        if not isinstance(text, str):
            raise BadInput(str(path), line, f"no text field {field_name!r}")
        items.append((_item_id(row, index), text))
    if not items:
        raise BadInput(str(path), 0, "no benchmark items")
    return Benchmark(name, str(path), file_sha256(path), field_name or "", items)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_split(
    dataset: str, config: str | None, split: str, revision: str | None, hint: str, missing_why: str
) -> Any:
    """One split of a hub dataset through ``datasets``, or a StillError from ``hint`` (a format string
    with ``{why}``) saying why not: the package missing, offline, or the load failed. Shared by the
    built-in benchmarks of ``decontam`` and ``eval``."""
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise StillError(hint.format(why=missing_why))
    if _offline():
        raise StillError(hint.format(why=" (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)"))
    try:
        import datasets

        return datasets.load_dataset(dataset, config, split=split, revision=revision)
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all end here
        raise StillError(hint.format(why=f" (loading failed: {type(exc).__name__})")) from exc


def load_builtin(name: str) -> Benchmark:
    spec = BUILTINS[name]
    hint = (
        f"built-in benchmark {name!r} ({spec.dataset}) needs the 'datasets' package and network access"
        f"{{why}}; pass a local copy instead: --against path/to/{name}.jsonl (JSONL, JSON or Parquet)"
    )
    missing = " (datasets is not installed: pip install 'still[hub]')"
    ds = load_hub_split(spec.dataset, spec.config, spec.split, spec.revision, hint, missing)
    items: list[tuple[Any, str]] = []
    digest = hashlib.sha256()
    for index, row in enumerate(ds):
        text = row.get(spec.text_field)
        if not isinstance(text, str):
            continue
        digest.update(text.encode("utf-8") + b"\0")
        item_id = row.get(spec.id_field) if spec.id_field else None
        items.append((item_id if isinstance(item_id, (str, int)) else index, text))
    source = f"hf:{spec.dataset}" + (f"/{spec.config}" if spec.config else "") + f":{spec.split}"
    source += f"@{getattr(ds, '_fingerprint', spec.revision or 'unpinned')}"
    return Benchmark(name, source, digest.hexdigest(), spec.text_field, items)


def parse_against(
    specs: Iterable[str], flag: str = "--against", builtins: Collection[str] = BUILTINS.keys()
) -> list[tuple[str, str]]:
    """``--against`` values (repeatable, comma-separated) as (name, file path or built-in name);
    ``still eval --bench`` reads its values the same way (``flag``, ``builtins``)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part and re.fullmatch(r"[\w.-]+", part.split("=", 1)[0]):
                name, target = part.split("=", 1)
            elif part in builtins and not Path(part).exists():
                name, target = part, part
            else:
                name, target = Path(part).name.split(".", 1)[0], part
            out.append((name, target))
    if not out:
        raise UsageError(f"{flag} needs at least one benchmark file or name")
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"benchmark name {dupes[0]!r} given twice; name them with NAME=PATH")
    return out


def load_benchmarks(specs: Iterable[str], bench_field: str | None) -> list[Benchmark]:
    out = []
    for name, target in parse_against(specs):
        path = Path(target)
        if target in BUILTINS and not path.exists():
            out.append(load_builtin(target))
        elif path.exists():
            out.append(load_benchmark_file(path, name, bench_field))
        else:
            known = ", ".join(BUILTINS)
            raise UsageError(f"--against {target}: no such file, and not a built-in benchmark ({known})")
    return out
