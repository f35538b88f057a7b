"""``--state DIR`` for the staged plan: the same state directory as ``still dedup --state``.

A staged run reads the state once and writes it once, like one process does:

* **snapshot** (``plan sign`` shard 0, or ``plan run`` before its jobs): under the state's lock,
  the representatives' exact keys, band rows (partitioned into the plan's buckets, as a file
  read before every input) and shingle offsets go to ``PLAN/sign/state``, with the state's
  generation. Their shingle sets are read from the state's ``shingles.bin`` itself, which only
  ever grows, so the snapshot's prefix of it stays valid.
* the plan's stages then treat the state's representatives as the earliest records (they stay
  representatives; new records join them by exact key or by the best verified edge, ties to the
  earliest), which is what ``still dedup --state`` decides for a new run;
* **commit** (``plan commit``, or ``plan run`` after its last filter job): under the lock again,
  and only when every input's filter finished after the last ``clusters`` and the state is still
  at the snapshot's generation (else another run committed in between and the outputs do not
  account for it: run the plan again), the new representatives are appended in input order,
  cluster member counts updated, and ``MemoryIndex.save`` switches the manifest atomically. The
  manifest names the plan's clusters, so a commit run again after it succeeded does nothing.

The state is ``MemoryIndex``'s format (manifest, arrays, shingles.bin), parameters checked
against its manifest, so runs may alternate between ``still dedup --state`` and the plan.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from still.core import dedup_plan as dp
from still.core.dedup import DedupConfig, MemoryIndex
from still.core.dedup_plan_inputs import unfiltered
from still.core.errors import StillError, UsageError
from still.core.fields import Fields


def open_state(params: dp.PlanParams) -> MemoryIndex:
    """The plan's --state index, loaded and locked (``config.wait``: wait for another run)."""
    if params.state_dir is None:
        raise UsageError("this plan has no --state directory")
    return MemoryIndex(params.config)


def snapshot(plan: str, index: MemoryIndex, params: dp.PlanParams) -> int:
    """Write ``plan/sign/state`` from the loaded ``index``; returns its representatives."""
    reps = len(index.rep_keys)
    exact = np.asarray(index.rep_keys, dtype=np.uint64)
    tmp, final = dp.atomic_dir(dp.state_dir_of(plan))
    try:
        np.save(os.path.join(tmp, "exact.npy"), exact)
        np.save(os.path.join(tmp, "offsets.npy"), np.asarray(index.store.offsets, dtype=np.int64)[: reps + 1])
        bands = index.bands.state()
        rows = [
            (band, bands["keys"][band], exact[bands["ids"][band]], bands["ids"][band].astype(np.uint64))
            for band in range(bands["keys"].shape[0])
        ]
        dp.write_buckets(tmp, rows, params.buckets)
        meta = {"state": params.state_dir, "generation": index.generation, "reps": reps, "params": params.manifest()}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        dp.commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return reps


def snapshot_state(plan: str, params: dp.PlanParams) -> int:
    """``plan sign --state`` (shard 0): lock, load and check the state, snapshot it, unlock."""
    index = open_state(params)
    try:
        return snapshot(plan, index, params)
    finally:
        index.close(False)


_CONFIG_KEYS = ("key", "threshold", "num_perm", "bands", "rows", "ngram", "seed", "near")


def config_of(params: dict[str, Any], wait: bool) -> DedupConfig:
    """The DedupConfig a plan was signed with (its manifest), to open its state."""
    fields = Fields(query_path=params["query_field"], response_path=params["response_field"])
    given = {name: params[name] for name in _CONFIG_KEYS}
    normalise = tuple(params["normalise"])
    return DedupConfig(**given, normalise=normalise, state_dir=params["state"], fields=fields, wait=wait)


def commit(plan: str, wait: bool) -> int:
    """``plan commit``: add this plan's new representatives to its --state; returns how many
    (0 as well when this plan's commit already happened)."""
    _, params = dp.signed(plan)
    if not params.get("state"):
        raise UsageError(f"{plan}: the plan was signed without --state; there is nothing to commit")
    index = MemoryIndex(config_of(params, wait))
    try:
        return commit_into(plan, index)
    finally:
        index.close(False)


def commit_into(plan: str, index: MemoryIndex) -> int:
    """Append the plan's new representatives to ``index`` (loaded and locked) and save it."""
    metas, params = dp.signed(plan)
    metas.sort(key=lambda m: int(m["file"]))
    state = dp.state_meta(plan, params)
    assert state is not None and index.state_dir
    clusters = os.path.join(plan, "clusters")
    token = dp.clusters_token(plan)
    missing = unfiltered(plan, len(metas))
    if missing:
        raise StillError(
            f"{plan}: input files {missing[:10]} are not filtered since the last clusters run; run their "
            "filter shards first (the state is committed only after every output is in place)"
        )
    if index.generation != int(state["generation"]):
        if _manifest(index.state_dir).get("plan") == token:
            return 0  # committed already (this is a rerun)
        raise StillError(
            f"{index.state_dir}: the state changed since this plan read it (generation {state['generation']}, "
            f"now {index.generation}: another run committed in between), so the outputs of {plan} do not "
            "account for that run; run the plan again from sign"
        )
    reps = int(state["reps"])
    if len(index.rep_keys) != reps:
        raise StillError(f"{index.state_dir}: {len(index.rep_keys)} representatives, the snapshot had {reps}")
    new_reps = np.load(os.path.join(clusters, "new_reps.npy"))
    for m in metas:
        k = int(m["file"])
        base = dp.file_base(k)
        mine = new_reps[(new_reps >= base) & (new_reps < dp.file_base(k + 1))]
        if mine.size:
            _add_file_reps(index, dp.file_dir(plan, k), (mine - base).astype(np.int64))
    # member counts: every record that joined a cluster (as still dedup counts ranks)
    rep_of = np.load(os.path.join(clusters, "rep_of.npy"))
    counted = np.load(os.path.join(clusters, "counted.npy"))
    numbers = np.where(rep_of < dp.file_base(0), rep_of.astype(np.int64), reps + np.searchsorted(new_reps, rep_of))
    joins = np.bincount(numbers[counted], minlength=len(index.members))
    for rep in np.flatnonzero(joins).tolist():
        index.members[rep] += int(joins[rep])
    index.save({"plan": token})
    return int(new_reps.size)


def _add_file_reps(index: MemoryIndex, directory: str, ordinals: np.ndarray) -> None:
    """One input file's new representatives (ascending ordinals), in order."""
    exact = np.load(os.path.join(directory, "exact.npy"))[ordinals]
    if index.config.near:
        bands = np.load(os.path.join(directory, "bands.npy"))[ordinals]
    else:
        bands = np.empty((ordinals.size, 0), dtype=np.uint32)
    offsets = np.load(os.path.join(directory, "offsets.npy"))
    data = np.memmap(os.path.join(directory, "shingles.bin"), dtype="<u8", mode="r") if offsets[-1] else offsets[:0]
    sets = [np.asarray(data[offsets[o] : offsets[o + 1]], dtype=np.uint64) for o in ordinals.tolist()]
    ids = np.asarray([index.next_rep() for _ in range(ordinals.size)], dtype=np.uint32)
    index.add_reps(ids, exact, bands, sets)


def _manifest(state_dir: str) -> dict[str, Any]:
    path = os.path.join(state_dir, "manifest.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        manifest: dict[str, Any] = json.load(f)
    return manifest
