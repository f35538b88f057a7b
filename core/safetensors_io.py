"""Safetensors model directories, read tensor by tensor and written shard by shard.

Reading: the shard layout comes from ``model.safetensors.index.json`` (or a single
``model.safetensors``); every shard's header is parsed and checked against its file size up front,
so a missing or truncated shard is refused before anything is written. Tensors are then read with
positioned reads of exactly their byte range (see ``TensorReader``), one open shard per model.

Writing: tensors are buffered up to ``max_shard_bytes`` and written as one safetensors file
(header, then the raw bytes), hashed with sha256 while written; ``finish`` names the shards
``model-0000i-of-0000N.safetensors`` and writes the index (one shard: ``model.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from still.core.errors import StillError

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header

# safetensors dtype names <-> torch dtype names
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
SAFETENSORS_NAMES = {v: k for k, v in DTYPE_NAMES.items()}
INT_DTYPES = {"I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class ModelFileError(StillError):
    """A model directory whose weights cannot be used (missing or corrupt shard, bad index)."""

    exit_code = 3


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name (F32, BF16, ...)
    shape: tuple[int, ...]
    shard: str  # file name inside the model directory
    begin: int = 0  # byte range in the shard file
    end: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header, check that the data it describes fits the file; (header, data offset)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise ModelFileError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > _HEADER_LIMIT or 8 + n > size:
                raise ModelFileError(f"{path}: truncated or corrupt safetensors header (length {n}, file {size} bytes)")
            header: dict[str, Any] = json.loads(fh.read(n))
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: shard missing") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors header ({exc})") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ModelFileError(
            f"{path}: truncated or corrupt shard (header describes {8 + n + end} bytes, file has {size}); "
            "copy the model again"
        )
    return header, 8 + n


@dataclass
class ModelFiles:
    """The tensors of one model directory and the shard each lives in."""

    path: Path
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> ModelFiles:
        root = Path(path)
        if not root.is_dir():
            raise ModelFileError(f"{root}: not a model directory")
        index = root / INDEX_NAME
        if index.exists():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelFileError(f"{index}: not a safetensors index ({exc})") from exc
            shards = sorted(set(weight_map.values()))
        elif (root / SINGLE_NAME).exists():
            weight_map, shards = {}, [SINGLE_NAME]
        else:
            raise ModelFileError(f"{root}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors weights are read)")
        model = cls(root, shards=shards)
        for shard in shards:
            header, data_offset = read_header(root / shard)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if weight_map and weight_map.get(name) != shard:
                    raise ModelFileError(
                        f"{index}: tensor {name} is in {shard} but the index says {weight_map.get(name)}"
                    )
                begin, end = (data_offset + o for o in meta["data_offsets"])
                model.tensors[name] = TensorInfo(name, meta["dtype"], tuple(meta["shape"]), shard, begin, end)
                if meta["dtype"] not in DTYPE_NAMES and meta["dtype"] not in INT_DTYPES:
                    raise ModelFileError(f"{root / shard}: tensor {name} has unsupported dtype {meta['dtype']}")
        missing = set(weight_map) - set(model.tensors)
        if missing:
            raise ModelFileError(f"{index}: {len(missing)} indexed tensors not in any shard, e.g. {sorted(missing)[0]}")
        return model

    def fingerprint(self) -> tuple[tuple[int, bytes], ...]:
        """Size and header bytes of each shard: equal for any two copies of the same weights."""
        out = []
        for shard in self.shards:
            path = self.path / shard
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                out.append((path.stat().st_size, fh.read(n)))
        return tuple(out)

    def sha256(self) -> str:
        """One digest over the shards in name order (each shard's bytes, hashed in 8 MiB reads)."""
        h = hashlib.sha256()
        for shard in self.shards:
            h.update(file_sha256(self.path / shard).encode())
        return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


class TensorReader:
    """Reads tensors of one model with positioned reads, keeping one shard file open at a time.

    Not memory-mapped: ``safe_open``'s mapping keeps every page it touched in the process's RSS until
    the shard is closed (a whole single-file model), while a read into a fresh buffer is freed with
    the tensor. ``os.preadv`` releases the GIL, so a reader thread can overlap reads with compute.
    """

    def __init__(self, model: ModelFiles) -> None:
        self.model = model
        self._shard: str | None = None
        self._fd = -1

    def get(self, name: str) -> torch.Tensor:
        import torch

        info = self.model.tensors[name]
        if info.shard != self._shard:
            self.close()
            self._fd = os.open(self.model.path / info.shard, os.O_RDONLY)
            self._shard = info.shard
        size = info.end - info.begin
        buf = torch.empty(size, dtype=torch.uint8)
        view = memoryview(buf.numpy())  # type: ignore[arg-type]
        done = 0
        while done < size:
            got = os.preadv(self._fd, [view[done:]], info.begin + done)
            if got <= 0:
                raise ModelFileError(f"{self.model.path / info.shard}: shard shorter than its header says ({name})")
            done += got
        dtype = getattr(torch, DTYPE_NAMES.get(info.dtype) or INT_DTYPES[info.dtype])
        return buf.view(dtype).reshape(info.shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._shard = -1, None


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    import torch

    flat = tensor.contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy())  # type: ignore[arg-type]


@dataclass
class WrittenShard:
    name: str
    bytes: int
    sha256: str


class ShardWriter:
    """Buffers output tensors and writes them as safetensors shards of at most ``max_shard_bytes``."""

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: list[tuple[str, torch.Tensor]] = []
        self._pending_bytes = 0
        self._data_total = 0
        self._written: list[tuple[str, WrittenShard, list[str]]] = []  # (temp name, shard, tensor names)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending.append((name, tensor))
        self._pending_bytes += size

    def _flush(self) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, tensor in self._pending:
            size = tensor.numel() * tensor.element_size()
            dtype = SAFETENSORS_NAMES[str(tensor.dtype).removeprefix("torch.")]
            header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
        temp = f".shard-{len(self._written):05d}.safetensors"
        h = hashlib.sha256()
        with open(self.out_dir / temp, "wb") as fh:
            for part in (struct.pack("<Q", len(raw)), raw):
                fh.write(part)
                h.update(part)
            for _, tensor in self._pending:
                data = _tensor_bytes(tensor)
                fh.write(data)
                h.update(data)
        shard = WrittenShard(temp, 8 + len(raw) + offset, h.hexdigest())
        self._written.append((temp, shard, [n for n, _ in self._pending]))
        self._data_total += offset
        self._pending, self._pending_bytes = [], 0

    def finish(self) -> list[WrittenShard]:
        """Write the last shard, give the shards their final names and write the index."""
        if self._pending or not self._written:
            self._flush()
        total = len(self._written)
        weight_map: dict[str, str] = {}
        shards = []
        for i, (temp, shard, names) in enumerate(self._written, 1):
            final = SINGLE_NAME if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
            os.replace(self.out_dir / temp, self.out_dir / final)
            shards.append(WrittenShard(final, shard.bytes, shard.sha256))
            weight_map.update(dict.fromkeys(names, final))
        if total > 1:
            index = {
                "metadata": {"total_size": self._data_total},  # tensor bytes, as transformers writes it
                "weight_map": dict(sorted(weight_map.items())),
            }
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return shards
