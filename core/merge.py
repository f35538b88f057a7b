"""Merge model directories tensor by tensor: the library call behind ``still merge``.

    from still.core.merge import MergePlan, merge
    manifest = merge(MergePlan("ties", [a, b], base=base, weights=(1, 1), densities=(0.5, 0.5)), out)

Everything is checked before anything is written (``merge_checks``); the output is built in a
temporary directory beside ``out`` and renamed into place at the end, so a killed run leaves no
half-written model at ``out``. Peak memory: the inputs of one tensor (one read each, plus a cast
when the compute dtype differs; small tensors are read one ahead), the method's scratch, and the
output shard buffer.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from still.core.errors import UsageError
from still.core.merge_checks import (
    MergeRefused,
    check_distinct,
    check_tensors,
    check_tokenizers,
    check_vocab,
    read_config,
    source_name,
)
from still.core.merge_methods import METHODS, MethodParams, merge_tensor
from still.core.safetensors_io import DTYPE_NAMES, ModelFiles, ShardWriter, TensorReader

DTYPES = ("float32", "bfloat16", "float16", "float64")
TOKENIZER_POLICIES = ("refuse", "base")
# Copied from the config source (the base, else the first model): config, generation config, tokenizer.
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
DEFAULT_SHARD_BYTES = 512 * 10**6  # 512MB, decimal as --max-shard-size


@dataclass
class MergePlan:
    """One merge: ``models`` are the non-base inputs (all inputs for linear), in order."""

    method: str
    models: Sequence[Path | str]
    base: Path | str | None = None
    weights: Sequence[float] = ()  # one per model, or one for all; default 1.0
    densities: Sequence[float] = ()  # idem; default 1.0 (no sparsification), as mergekit
    lam: float = 1.0
    t: float = 0.5
    normalize: bool | None = None  # None: the method's default (linear, ties: on)
    dtype: str | None = None  # compute dtype; None: the inputs' promoted dtype, per tensor
    out_dtype: str | None = None  # None: the compute dtype
    seed: int = 0
    tokenizer_policy: str = "refuse"
    max_shard_bytes: int = DEFAULT_SHARD_BYTES

    def params(self) -> MethodParams:
        n = len(self.models)
        info = METHODS[self.method]
        return MethodParams(
            weights=_per_model("weight", self.weights, n),
            densities=_per_model("density", self.densities, n),
            lam=self.lam,
            t=self.t,
            normalize=info.default_normalize if self.normalize is None else self.normalize,
        )

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown merge method {self.method!r}; choose from {', '.join(METHODS)}")
        info = METHODS[self.method]
        if info.needs_base and self.base is None:
            raise UsageError(f"{self.method} needs --base (the model the task vectors are taken from)")
        if not info.needs_base and self.base is not None:
            raise UsageError(f"{self.method} takes no --base (config and tokenizer come from the first model)")
        n = len(self.models)
        if n < info.min_models or (info.max_models is not None and n > info.max_models):
            want = info.min_models if info.max_models == info.min_models else f"at least {info.min_models}"
            raise UsageError(f"{self.method} merges {want} model(s) besides the base; got {n}")
        for option, values in (("weight", self.weights), ("density", self.densities)):
            if values and option not in info.params:
                raise UsageError(f"--{option} does not apply to {self.method}")
        if self.lam != 1.0 and "lambda" not in info.params:
            raise UsageError(f"--lambda does not apply to {self.method}")
        if any(not 0 <= d <= 1 for d in self.densities):
            raise UsageError("--density must be in [0, 1]")
        for name in (self.dtype, self.out_dtype):
            if name is not None and name not in DTYPES:
                raise UsageError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
        if self.tokenizer_policy not in TOKENIZER_POLICIES:
            raise UsageError(f"--tokenizer-policy must be one of {', '.join(TOKENIZER_POLICIES)}")
        self.params()

    def inputs(self) -> list[Path]:
        """Base first (the config source), then the models."""
        return [Path(p) for p in ([self.base] if self.base is not None else []) + list(self.models)]

    def describe(self) -> dict[str, Any]:
        p = self.params()
        info = METHODS[self.method]
        out: dict[str, Any] = {}
        if "weight" in info.params:
            out["weight"] = list(p.weights)
        if "density" in info.params:
            out["density"] = list(p.densities)
        if "lambda" in info.params:
            out["lambda"] = p.lam
        if "t" in info.params:
            out["t"] = p.t
        if self.method in ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"):
            out["normalize"] = p.normalize
        return out


def _per_model(option: str, values: Sequence[float], n: int) -> tuple[float, ...]:
    if not values:
        return (1.0,) * n
    if len(values) == 1:
        return (float(values[0]),) * n
    if len(values) != n:
        raise UsageError(f"--{option} given {len(values)} times for {n} models: give it once, or once per model")
    return tuple(float(v) for v in values)


@dataclass
class _Checked:
    paths: list[Path]
    models: list[ModelFiles]
    names: list[str]
    config: dict[str, Any] = field(default_factory=dict)


def check(plan: MergePlan) -> _Checked:
    """Every refusal happens here, before any output exists."""
    plan.validate()
    paths = plan.inputs()
    models = [ModelFiles.open(p) for p in paths]
    prints = [m.fingerprint() for m in models]
    # same sizes and headers: hash now to tell a copy from a look-alike; else hashes come later
    suspects = {i for i, f in enumerate(prints) if prints.count(f) > 1}
    check_distinct(paths, [models[i].sha256() if i in suspects else prints[i] for i in range(len(models))])
    configs = [read_config(p) for p in paths]
    check_vocab(paths, configs, models)
    check_tokenizers(paths, plan.tokenizer_policy)
    names = check_tensors(paths, models)
    return _Checked(paths, models, names, configs[0])


@contextmanager
def atomic_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary directory beside ``out`` that replaces it only when the block succeeds."""
    if out.exists() and not force:
        raise MergeRefused(f"{out}: already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.still-merge-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.still-old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def merge(
    plan: MergePlan,
    out: Path | str,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Check, merge and write ``out``; return the manifest (inputs, method, parameters, shards)."""
    out = Path(out)
    if out.exists() and not force:
        raise MergeRefused(f"{out}: already exists; pass --force to replace it")
    checked = check(plan)
    started = time.perf_counter()
    # the manifest's input digests are computed while the merge runs (hashlib releases the GIL)
    with ThreadPoolExecutor(max_workers=1) as hasher, atomic_dir(out, force) as tmp:
        pending = [hasher.submit(m.sha256) for m in checked.models]
        shards, out_dtypes = _merge_into(plan, checked, tmp, progress)
        _copy_side_files(checked.paths[0], tmp, checked.config, out_dtypes)
        digests = [f.result() for f in pending]
    roles = (["base"] if plan.base is not None else []) + ["model"] * len(plan.models)
    return {
        "out": str(out),
        "method": plan.method,
        "inputs": [{"path": str(p), "role": r, "sha256": d} for p, r, d in zip(checked.paths, roles, digests)],
        "parameters": plan.describe(),
        "seed": plan.seed,
        "dtype": plan.dtype,
        "out_dtype": plan.out_dtype or (sorted(out_dtypes)[0] if len(out_dtypes) == 1 else None),
        "tokenizer_policy": plan.tokenizer_policy,
        "tensors": len(checked.names),
        "shards": [{"name": s.name, "bytes": s.bytes, "sha256": s.sha256} for s in shards],
        "seconds": round(time.perf_counter() - started, 3),
    }


def _merge_into(
    plan: MergePlan, checked: _Checked, tmp: Path, progress: Callable[[int, int], None] | None
) -> tuple[list[Any], set[str]]:
    import torch

    params = plan.params()
    has_base = plan.base is not None
    readers = [TensorReader(m) for m in checked.models]
    writer = ShardWriter(tmp, plan.max_shard_bytes)
    out_dtypes: set[str] = set()
    names = checked.names

    def read(name: str) -> list[Any]:
        return [r.get(source_name(m, name) or name) for r, m in zip(readers, checked.models)]

    # Read the next tensor while this one is computed, when both fit in the largest tensor's share
    # of the memory bound (so never next to the embeddings).
    size = {n: checked.models[0].tensors[n].end - checked.models[0].tensors[n].begin for n in names}
    largest = max(size.values(), default=0)
    # mergekit seeds once and walks tensors in name order; the same order gives the same random draws.
    torch.manual_seed(plan.seed)
    with torch.inference_mode(), ThreadPoolExecutor(max_workers=1) as reader:
        ahead = reader.submit(read, names[0]) if names else None
        for i, name in enumerate(names):
            assert ahead is not None
            raw, ahead = ahead.result(), None
            following = names[i + 1] if i + 1 < len(names) else None
            if following is not None and size[name] + size[following] <= largest:
                ahead = reader.submit(read, following)
            if not raw[0].is_floating_point():
                result = raw[0]  # integer buffers are copied from the base, as mergekit does
            else:
                compute = getattr(torch, plan.dtype) if plan.dtype else _promoted(raw)
                models = [t.to(compute) for t in raw]
                del raw
                base = models.pop(0) if has_base else None
                # sort several task vectors at once where their scratch fits beside the largest tensor's
                workers = min(len(models), os.cpu_count() or 1) if size[name] * len(models) <= largest else 1
                result = merge_tensor(plan.method, base, models, params, workers)  # may empty ``models``
                del base, models
                result = result.to(getattr(torch, plan.out_dtype)) if plan.out_dtype else result
            out_dtypes.add(str(result.dtype).removeprefix("torch."))
            writer.add(name, result)
            del result
            if ahead is None and following is not None:
                ahead = reader.submit(read, following)
            if progress is not None:
                progress(i + 1, len(names))
    for r in readers:
        r.close()
    return writer.finish(), out_dtypes


def _promoted(tensors: Sequence[Any]) -> Any:
    import torch

    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _copy_side_files(source: Path, dest: Path, config: dict[str, Any], out_dtypes: set[str]) -> None:
    config = dict(config)
    if len(out_dtypes) == 1:
        dtype = next(iter(out_dtypes))
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "dtype":
                config[key] = dtype
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in COPIED_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, dest / name)


def progress_printer(label: str) -> Callable[[int, int], None] | None:
    """A tensors-done counter on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            sys.stderr.write(f"\r{label}: {done}/{total} tensors" + ("\033[K\n" if done == total else ""))
            sys.stderr.flush()

    return show


__all__ = ["MergePlan", "MergeRefused", "merge", "check", "DTYPES", "DTYPE_NAMES"]
