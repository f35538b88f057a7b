"""The hashed benchmark index and its file format.

Each benchmark item is a sequence of token ids; tokens are stored as unsalted 64-bit xxh3 hashes
of their canonical form, in order. That is for size and speed, not confidentiality: hashing a
word list recovers most of the benchmark text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from still import __version__
from still.core.decontam.benchmarks import Benchmark, file_sha256
from still.core.decontam.normalise import NORMALISE_VERSION, NUM_TOKEN, canonical_tokens, mask_token, token_hash
from still.core.errors import BadInput, UsageError
from still.core.jsonl import umask_mode

INDEX_FORMAT = "still-decontam-index"
INDEX_VERSION = 1
UNK = 0  # a token that no benchmark item contains
NUM = 1  # every number, in the masked view


class DecontamIndex:
    """Benchmark items as token-id sequences, plus the tables matching runs on.

    Persisted as a directory: ``manifest.json`` (benchmarks, checksums, parameters, versions) and
    ``index.npz`` (token hashes, id sequences, item ids as JSON). No text in clear, but not secret:
    the hashes are unsalted and ordered, so a word list recovers most of the benchmark text.
    """

    def __init__(
        self,
        benchmarks: list[dict[str, Any]],
        vocab_hashes: np.ndarray,
        mask_of: np.ndarray,
        token_len: np.ndarray,
        item_tokens: np.ndarray,
        item_offsets: np.ndarray,
        item_bench: np.ndarray,
        item_ids: list[Any],
    ) -> None:
        self.benchmarks = benchmarks
        self.vocab_hashes = vocab_hashes  # uint64, id -> xxh3 of the canonical token
        self.item_tokens = item_tokens  # int32 ids, flat
        self.item_offsets = item_offsets  # int64, N+1
        self.item_bench = item_bench  # int32, N
        self.item_ids = item_ids
        self.mask_of = mask_of  # int32, id -> id of its number-masked form
        self.token_len = token_len  # int8, id -> length of the token (to pick rare anchors)
        self.vocab = {int(h): i for i, h in enumerate(vocab_hashes.tolist()) if i > UNK}

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, benchmarks: Sequence[Benchmark]) -> DecontamIndex:
        vocab: dict[str, int] = {"": UNK, NUM_TOKEN: NUM}
        hashes: list[int] = [0, token_hash(NUM_TOKEN)]
        mask_of: list[int] = [UNK, NUM]
        lengths: list[int] = [0, 1]

        def intern(form: str) -> int:
            idx = vocab.get(form)
            if idx is None:
                idx = vocab[form] = len(hashes)
                hashes.append(token_hash(form))
                mask_of.append(idx)
                lengths.append(min(len(form), 127))
            return idx

        flat: list[int] = []
        offsets = [0]
        bench_of: list[int] = []
        ids: list[Any] = []
        for b, bench in enumerate(benchmarks):
            for item_id, text in bench.items:
                for tok in canonical_tokens(text):
                    idx = intern(tok)
                    mask_of[idx] = intern(mask_token(tok)) if mask_token(tok) != NUM_TOKEN else NUM
                    flat.append(idx)
                offsets.append(len(flat))
                bench_of.append(b)
                ids.append(item_id)
        meta = [
            {"name": bm.name, "source": bm.source, "sha256": bm.sha256, "field": bm.field, "items": len(bm.items)}
            for bm in benchmarks
        ]
        return cls(
            meta,
            np.array(hashes, dtype=np.uint64),
            np.array(mask_of, dtype=np.int32),
            np.array(lengths, dtype=np.int8),
            np.array(flat, dtype=np.int32),
            np.array(offsets, dtype=np.int64),
            np.array(bench_of, dtype=np.int32),
            ids,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write the index atomically (a temporary directory renamed into place)."""
        directory = Path(directory)
        parent = directory.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".still-index-", dir=parent))
        os.chmod(tmp, umask_mode(directory=True))  # mkdtemp's 0700 would hide the index from teammates
        try:
            arrays = tmp / "index.npz"
            with open(arrays, "wb") as fh:
                np.savez(
                    fh,
                    vocab_hashes=self.vocab_hashes,
                    mask_of=self.mask_of,
                    token_len=self.token_len,
                    item_tokens=self.item_tokens,
                    item_offsets=self.item_offsets,
                    item_bench=self.item_bench,
                    item_ids=np.frombuffer(orjson.dumps(self.item_ids), dtype=np.uint8),
                )
            manifest = self.manifest(file_sha256(arrays))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            old: Path | None = None
            if directory.exists():
                if not (directory / "manifest.json").exists():
                    raise UsageError(f"{directory} exists and is not a decontam index; not replacing it")
                old = parent / f".{directory.name}.old-{os.getpid()}"
                os.replace(directory, old)  # the old index goes only once the new one is in place
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def manifest(self, arrays_sha256: str) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "still_version": __version__,
            "normalise_version": NORMALISE_VERSION,
            "token_hash": "xxh3_64 of the canonical token (unsalted: not confidential)",
            "benchmarks": self.benchmarks,
            "items": self.n_items,
            "vocabulary": len(self.vocab_hashes),
            "arrays_sha256": arrays_sha256,
        }

    @classmethod
    def load(cls, directory: str | Path) -> DecontamIndex:
        directory = Path(directory)
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise UsageError(f"--index {directory}: not a decontam index (no manifest.json)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise BadInput(str(manifest_path), 0, f"invalid JSON: {exc}") from exc
        if manifest.get("format") != INDEX_FORMAT:
            raise UsageError(f"--index {directory}: not a decontam index")
        if manifest.get("format_version") != INDEX_VERSION or manifest.get("normalise_version") != NORMALISE_VERSION:
            raise UsageError(
                f"--index {directory}: built by an incompatible version (format {manifest.get('format_version')}, "
                f"normalisation {manifest.get('normalise_version')}); rebuild it with `still decontam index build`"
            )
        arrays_path = directory / "index.npz"
        if not arrays_path.is_file() or file_sha256(arrays_path) != manifest.get("arrays_sha256"):
            raise UsageError(f"--index {directory}: index.npz is missing or does not match its manifest checksum")
        with np.load(arrays_path, allow_pickle=False) as z:
            index = cls(
                manifest["benchmarks"],
                z["vocab_hashes"],
                z["mask_of"],
                z["token_len"],
                z["item_tokens"],
                z["item_offsets"],
                z["item_bench"],
                orjson.loads(z["item_ids"].tobytes()),
            )
        return index

    def item_slice(self, i: int) -> np.ndarray:
        return self.item_tokens[int(self.item_offsets[i]) : int(self.item_offsets[i + 1])]
