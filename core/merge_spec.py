"""Multi-stage merges from a small YAML or JSON spec (TinyR1: math into science, then into code).

    seed: 0
    dtype: bfloat16
    out_dtype: bfloat16
    models: {math: ./math, science: ./science, code: ./code}   # names for paths (optional)
    stages:
      - {name: math_science, method: arcee_fusion, base: science, models: [math]}
      - {method: arcee_fusion, base: code, models: [math_science]}

A model reference is a name from ``models``, the ``name`` of an earlier stage, or a path relative to
the spec file. Top-level ``seed``, ``dtype``, ``out_dtype``, ``tokenizer_policy`` and
``max_shard_size`` are defaults every stage may override. Earlier stages are written to a
temporary directory beside the output and removed at the end; the last stage is the output.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from still.core.errors import BadInput, require
from still.core.merge import MergePlan, MergeRefused, merge

STAGE_KEYS = {
    "name", "method", "base", "models", "weight", "density", "lambda", "t", "normalize",
    "dtype", "out_dtype", "seed", "tokenizer_policy", "max_shard_size", "ties_selection",
}  # fmt: skip
DEFAULT_KEYS = {"seed", "dtype", "out_dtype", "tokenizer_policy", "max_shard_size"}


def parse_size(text: str | int) -> int:
    """``512MB``, ``2GB``, ``100KB`` or a byte count (decimal units, as mergekit's --out-shard-size)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    s = str(text).strip().upper()
    for unit, factor in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * factor)
    return int(s)


def load_spec(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        require("yaml", "models", "a YAML merge spec")
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise BadInput(str(path), mark.line + 1 if mark else 0, f"not YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadInput(str(path), getattr(exc, "lineno", 0), f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise BadInput(str(path), 0, "a merge spec is a mapping with a non-empty 'stages' list")
    unknown = set(data) - DEFAULT_KEYS - {"models", "stages"}
    if unknown:
        raise BadInput(
            str(path),
            0,
            f"unknown key {sorted(unknown)[0]!r} (allowed: models, stages, {', '.join(sorted(DEFAULT_KEYS))})",
        )
    return data


def _plan(stage: dict[str, Any], defaults: dict[str, Any], resolve: Callable[[str], Path], where: str) -> MergePlan:
    unknown = set(stage) - STAGE_KEYS
    if unknown:
        raise BadInput(where, 0, f"unknown stage key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(STAGE_KEYS))})")
    s = {**defaults, **stage}
    if "method" not in s or "models" not in s:
        raise BadInput(where, 0, "a stage needs 'method' and 'models'")

    def listed(key: str) -> list[float]:
        v = s.get(key, [])
        return [float(x) for x in (v if isinstance(v, list) else [v])]

    models = s["models"] if isinstance(s["models"], list) else [s["models"]]
    return MergePlan(
        method=s["method"],
        models=[resolve(str(m)) for m in models],
        base=resolve(str(s["base"])) if s.get("base") is not None else None,
        weights=listed("weight"),
        densities=listed("density"),
        lam=float(s.get("lambda", 1.0)),
        t=float(s.get("t", 0.5)),
        normalize=s.get("normalize"),
        dtype=s.get("dtype"),
        out_dtype=s.get("out_dtype"),
        seed=int(s.get("seed", 0)),
        tokenizer_policy=s.get("tokenizer_policy", "refuse"),
        ties_selection=s.get("ties_selection", "sort"),
        max_shard_bytes=parse_size(s["max_shard_size"]) if "max_shard_size" in s else MergePlan.max_shard_bytes,
    )


def run_spec(
    spec_path: Path | str,
    out: Path | str,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> dict[str, Any]:
    """Run every stage; return the last stage's manifest with the earlier ones under ``stages``."""
    spec_path, out = Path(spec_path), Path(out)
    data = load_spec(spec_path)
    if out.exists() and not force:
        raise MergeRefused(f"{out}: already exists; pass --force to replace it")
    defaults = {k: data[k] for k in DEFAULT_KEYS if k in data}
    defaults.update(overrides or {})
    names: dict[str, Path] = {k: (spec_path.parent / str(v)) for k, v in (data.get("models") or {}).items()}
    stages: list[dict[str, Any]] = data["stages"]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.still-stages-", dir=out.parent))
    done: list[dict[str, Any]] = []
    try:
        for i, stage in enumerate(stages):
            where = f"{spec_path} stage {i + 1}"

            def resolve(ref: str) -> Path:
                return names[ref] if ref in names else spec_path.parent / ref

            plan = _plan(stage, defaults, resolve, where)
            last = i == len(stages) - 1
            label = str(stage.get("name", f"stage{i + 1}"))
            target = out if last else work / label
            manifest = merge(
                plan, target, force=force if last else False, progress=progress(label) if progress else None
            )
            manifest["stage"] = label
            if not last:
                names[label] = target
                done.append(manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest["spec"] = str(spec_path)
    manifest["stages"] = done
    return manifest
