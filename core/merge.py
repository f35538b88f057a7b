"""Merge model directories tensor by tensor: the library call behind ``still merge``.

    from still.core.merge import MergePlan, merge
    manifest = merge(MergePlan("ties", [a, b], base=base, weights=(1, 1), densities=(0.5, 0.5)), out)

Everything is checked before anything is written (``merge_checks``); the output is built in a
temporary directory beside ``out`` and renamed into place at the end, so a killed run leaves no
half-written model at ``out``. Peak memory: the inputs of one tensor (memory-mapped; linear and TIES
cast them chunk by chunk, the other methods whole when the compute dtype differs), the method's
scratch, its result, and the previous result while it is written (never beside a large tensor's
work). There is no output shard buffer: each result streams to its shard.
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
from still.core.merge_methods import METHODS, MethodParams, merge_tensor, result_dtype
from still.core.safetensors_io import (
    DTYPE_NAMES,
    INT_DTYPES,
    ModelFiles,
    ShardWriter,
    TensorReader,
    WrittenShard,
    plan_shards,
)

DTYPES = ("float32", "bfloat16", "float16", "float64")
TOKENIZER_POLICIES = ("refuse", "base")
TIES_SELECTIONS = ("sort", "select")  # see merge_methods._trim_mask
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
    ties_selection: str = "sort"  # sort: mergekit's exact tie order; select: bounded memory

    def params(self) -> MethodParams:
        n = len(self.models)
        info = METHODS[self.method]
        return MethodParams(
            weights=_per_model("weight", self.weights, n),
            densities=_per_model("density", self.densities, n),
            lam=self.lam,
            t=self.t,
            normalize=info.default_normalize if self.normalize is None else self.normalize,
            ties_selection=self.ties_selection,
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
        if self.ties_selection not in TIES_SELECTIONS:
            raise UsageError(f"--ties-selection must be one of {', '.join(TIES_SELECTIONS)}")
        if self.ties_selection != "sort" and self.method != "ties":
            raise UsageError("--ties-selection applies to ties only")
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
        if self.method == "ties":
            out["ties_selection"] = p.ties_selection
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
) -> tuple[list[WrittenShard], set[str]]:
    import torch

    params = plan.params()
    has_base = plan.base is not None
    names = checked.names
    sources = [[source_name(m, n) or n for m in checked.models] for n in names]
    dtypes = [[_torch_name(m.tensors[s].dtype) for m, s in zip(checked.models, srcs)] for srcs in sources]
    computes = [_compute_dtype(plan, d) for d in dtypes]
    out_dtypes = [_output_dtype(plan, d, c) for d, c in zip(dtypes, computes)]
    shapes = [checked.models[0].tensors[n].shape for n in names]
    writer = ShardWriter(tmp, plan_shards(list(zip(names, out_dtypes, shapes)), plan.max_shard_bytes))
    readers = [TensorReader(m) for m in checked.models]

    def drop(tensor: torch.Tensor) -> None:
        for r in readers:
            r.drop_pages(tensor)

    size = [checked.models[0].tensors[n].end - checked.models[0].tensors[n].begin for n in names]
    largest = max(size, default=0)
    written = 0  # bytes of the result still being written
    # mergekit seeds once and walks tensors in name order; the same order gives the same random draws.
    torch.manual_seed(plan.seed)
    try:
        with torch.inference_mode():
            for i, name in enumerate(names):
                if size[i] + written > largest:
                    writer.drain()  # so the last result never waits beside a large tensor's scratch
                raw = [r.get(s) for r, s in zip(readers, sources[i])]
                compute_name = computes[i]
                if compute_name is None:
                    result = raw[0]  # integer buffers are copied from the base, as mergekit does
                else:
                    compute = getattr(torch, compute_name)
                    base = raw.pop(0) if has_base else None
                    # trim several task vectors at once where their scratch fits beside the largest tensor's
                    workers = min(len(raw), os.cpu_count() or 1) if size[i] * len(raw) <= largest else 1
                    result = merge_tensor(plan.method, base, raw, params, compute, drop, workers)  # empties raw
                    del base
                    result = result.to(getattr(torch, out_dtypes[i]))
                del raw
                writer.add(name, result)
                written = result.numel() * result.element_size()
                del result
                if progress is not None:
                    progress(i + 1, len(names))
        return writer.finish(), set(out_dtypes)
    finally:
        writer.close()
        for r in readers:
            r.close()


def _torch_name(safetensors_dtype: str) -> str:
    return DTYPE_NAMES.get(safetensors_dtype) or INT_DTYPES[safetensors_dtype]


def _compute_dtype(plan: MergePlan, dtypes: Sequence[str]) -> str | None:
    """The dtype one tensor is merged in: --dtype, else the inputs' promoted dtype; None for integers."""
    import torch

    if dtypes[0] not in DTYPES:
        return None
    if plan.dtype:
        return plan.dtype
    promoted = getattr(torch, dtypes[0])
    for name in dtypes[1:]:
        promoted = torch.promote_types(promoted, getattr(torch, name))
    return str(promoted).removeprefix("torch.")


def _output_dtype(plan: MergePlan, dtypes: Sequence[str], compute: str | None) -> str:
    import torch

    if compute is None:
        return dtypes[0]
    return plan.out_dtype or str(result_dtype(plan.method, getattr(torch, compute))).removeprefix("torch.")


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
