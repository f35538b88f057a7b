"""The stages of the staged plan that read the input files: ``sign`` (stage 1) and ``filter``
(stage 5), with the ``--on-error`` policy, the fields and the line limit of ``still dedup``.

``sign`` applies the policy once (to malformed lines and to records without a key text) and
keeps the line numbers of the records it signed; ``filter`` reads the same files again and
leaves out, by line number, what sign rejected (counting it as sign did), so both see the same
records whatever the policy, and the ids (record numbers) mean the same in every stage.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Iterator, Sequence

import numpy as np

from still.core.dedup import key_text
from still.core.dedup_features import FeatureMaker, response_key
from still.core.dedup_plan import (
    PlanParams,
    Shard,
    atomic_dir,
    check_config,
    clusters_token,
    commit_dir,
    file_base,
    file_dir,
    signed,
    write_buckets,
)
from still.core.errors import BadInput, StillError, UsageError
from still.core.jsonl import AtomicOutput, ErrorPolicy, JsonlReader
from still.core.stats import RunStats


def sign(plan: str, inputs: Sequence[str], shard: Shard, params: PlanParams, stats: RunStats) -> None:
    """Stage 1 for this shard's files (a --state directory is snapshotted by ``dedup_plan_state``).

    Records without a key text and malformed lines go to the ``--on-error`` policy here, once;
    ``filter`` drops them by their line numbers (``lines.npy``: the lines of the signed records).
    With quarantine, each file's bad lines wait in its sign directory for ``write_rejected``."""
    config = params.config
    check_config(config)
    policy = params.policy()
    maker = FeatureMaker(config.feature_params())
    bands, _ = config.lsh_params()
    with_state = params.state_dir is not None
    for k, path in shard.files(inputs):
        tmp, final = atomic_dir(file_dir(plan, k))
        try:
            if policy.mode == "quarantine":
                policy = ErrorPolicy("quarantine", os.path.join(tmp, "rejected.jsonl"))
            file_stats = RunStats(stats.command)
            exact_parts: list[np.ndarray] = []
            band_parts: list[np.ndarray] = []
            offsets = [np.zeros(1, dtype=np.int64)]
            lines: list[int] = []
            responses: list[int | None] = []
            written = 0
            reader = JsonlReader([path], file_stats, policy, params.max_line_bytes)
            with open(os.path.join(tmp, "shingles.bin"), "wb") as shingles:
                for texts in _key_blocks(reader, params, file_stats, lines, responses if with_state else None):
                    feats = maker(texts)
                    exact_parts.append(feats.exact)
                    shingles.write(feats.shingle_data.astype("<u8").tobytes())
                    offsets.append(feats.shingle_offsets[1:] + written)
                    written += int(feats.shingle_data.size)
                    if config.near:
                        band_parts.append(feats.band_keys)
            exact = np.concatenate(exact_parts) if exact_parts else np.empty(0, np.uint64)
            ids = file_base(k) + np.arange(exact.size, dtype=np.uint64)
            np.save(os.path.join(tmp, "offsets.npy"), np.concatenate(offsets))
            np.save(os.path.join(tmp, "exact.npy"), exact)
            np.save(os.path.join(tmp, "lines.npy"), np.asarray(lines, dtype=np.int64))
            keys = np.concatenate(band_parts) if band_parts else np.empty((0, bands), np.uint32)
            if with_state:  # what plan commit adds to the state for this file's representatives
                np.save(os.path.join(tmp, "bands.npy"), keys)
                if config.key == "query":
                    np.save(os.path.join(tmp, "responses.npy"), _response_array(responses))
            write_buckets(tmp, [(band, keys[:, band], exact, ids) for band in range(keys.shape[1])], params.buckets)
            meta = {
                "file": k,
                "files": len(inputs),
                "source": path,
                "records": int(exact.size),
                "lines": file_stats.read,
                "errors": dict(file_stats.errors),
                "params": params.manifest(),
            }
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f)
            commit_dir(tmp, final)
            stats.read += file_stats.read
            stats.written += int(exact.size)
            stats.errors.update(file_stats.errors)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _key_blocks(
    reader: JsonlReader,
    params: PlanParams,
    stats: RunStats,
    lines: list[int],
    responses: list[int | None] | None,
) -> Iterator[list[str]]:
    """Blocks of key texts; a record without one goes to the --on-error policy (as in still dedup)."""
    config = params.config
    texts: list[str] = []
    for rec in reader:
        try:
            texts.append(key_text(config, rec))
        except BadInput as exc:
            stats.reject(rec, exc.message)
            continue
        lines.append(rec.line)
        if responses is not None:
            responses.append(response_key(config.key, config.fields, rec))
        if len(texts) >= config.block_size:
            yield texts
            texts = []
    if texts:
        yield texts


def _response_array(responses: Sequence[int | None]) -> np.ndarray:
    """Response keys as [n, 2] uint64: (has a response, its key)."""
    out = np.zeros((len(responses), 2), dtype=np.uint64)
    for row, key in enumerate(responses):
        if key is not None:
            out[row] = (1, key)
    return out


def forget_other_inputs(plan: str, files: int) -> None:
    """Remove what ``sign`` left for input files ``files`` and beyond (a plan directory used
    again with fewer inputs), so that they do not look like part of this plan."""
    for path in glob.glob(os.path.join(plan, "sign", "f*")):
        name = os.path.basename(path)
        if name[1:].isdigit() and int(name[1:]) >= files:
            shutil.rmtree(path, ignore_errors=True)


def write_rejected(plan: str, files: Sequence[int], path: str) -> None:
    """--on-error quarantine=FILE: the bad lines ``sign`` set aside for these files, in their order
    (no bad line: FILE is not written, as with a stream command)."""
    parts = [p for p in (os.path.join(file_dir(plan, k), "rejected.jsonl") for k in files) if os.path.exists(p)]
    if not parts:
        return
    with AtomicOutput(path) as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)


def filter_shard(
    plan: str, inputs: Sequence[str], shard: Shard, out_dir: str, stats: RunStats, gzip_level: int = 1
) -> list[str]:
    """Stage 5: each of this shard's files without its removed records, as OUT_DIR/NNNNN-NAME.

    The records ``sign`` rejected (--on-error) are left out again by their line numbers and
    counted as the errors sign found; each finished file leaves a mark that ``commit`` checks."""
    token = clusters_token(plan)
    removed = np.load(os.path.join(plan, "clusters", "removed.npy"))
    near = np.load(os.path.join(plan, "clusters", "near.npy"))
    metas = {int(m["file"]): m for m in signed(plan)[0]}
    written = []
    os.makedirs(out_dir, exist_ok=True)
    for k, source in shard.files(inputs):
        meta = metas.get(k)
        same_name = meta is not None and os.path.basename(meta["source"]) == os.path.basename(source)
        if meta is None or not same_name or meta["files"] != len(inputs):
            raise UsageError(f"{source}: give filter the inputs sign had, in the same order")
        target = os.path.join(out_dir, f"{k:05d}-{os.path.basename(source)}")
        lines = np.load(os.path.join(file_dir(plan, k), "lines.npy"))
        base = file_base(k)
        # sign applied --on-error: here bad lines are only skipped (counted from sign's meta)
        read_stats = RunStats(stats.command)
        reader = JsonlReader([source], read_stats, ErrorPolicy("skip"), int(meta["params"]["max_line_bytes"]))
        with AtomicOutput(target, gzip_level) as out:
            ordinal = 0
            for rec in reader:
                if ordinal >= lines.size or lines[ordinal] != rec.line:
                    continue  # rejected by sign
                doc = base + np.uint64(ordinal)
                ordinal += 1
                at = int(np.searchsorted(removed, doc))
                if at < removed.size and removed[at] == doc:
                    stats.drop("near duplicate" if near[at] else "exact duplicate")
                    continue
                out.write(rec.to_bytes())
                stats.written += 1
            if ordinal != meta["records"] or read_stats.read != meta["lines"]:
                # the file changed since sign: its ids mean nothing
                raise StillError(
                    f"{source}: {read_stats.read} lines now, {meta['lines']} when signed "
                    f"({ordinal} of its {meta['records']} signed records found); sign again"
                )
        stats.read += read_stats.read
        stats.errors.update(meta["errors"])
        _mark_filtered(plan, k, token, target)
        written.append(target)
    return written


def _mark_filtered(plan: str, k: int, token: str, target: str) -> None:
    os.makedirs(os.path.join(plan, "filtered"), exist_ok=True)
    path = os.path.join(plan, "filtered", f"f{k:05d}.json")
    with open(path + ".part", "w") as f:
        json.dump({"file": k, "token": token, "output": target}, f)
    os.replace(path + ".part", path)


def unfiltered(plan: str, files: int) -> list[int]:
    """The input files whose filter has not finished since the last clusters run."""
    token = clusters_token(plan)
    missing = []
    for k in range(files):
        path = os.path.join(plan, "filtered", f"f{k:05d}.json")
        try:
            with open(path) as f:
                done = json.load(f)["token"] == token
        except (OSError, ValueError, KeyError):
            done = False
        if not done:
            missing.append(k)
    return missing
