"""Safetensors model directories, read tensor by tensor and written shard by shard.

Reading: the shard layout comes from ``model.safetensors.index.json`` (or a single
``model.safetensors``); every shard's header is parsed and checked against its file size up front,
so a missing or truncated shard is refused before anything is written. Tensors are then memory-mapped
one by one, exactly their byte range (see ``TensorReader``), one open shard per model.

Writing: the output's layout (names, dtypes, shapes) is planned before the first tensor is merged
(``plan_shards``: shards of at most ``max_shard_bytes``, named ``model-0000i-of-0000N.safetensors``,
or ``model.safetensors`` alone), so each shard's header is written first and every tensor is
streamed to its file and its sha256 as it comes (``ShardWriter``); ``finish`` writes the index.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
SAFETENSORS_NAMES.update({v: k for k, v in INT_DTYPES.items()})
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2}
_ITEMSIZE.update({"int8": 1, "uint8": 1, "bool": 1})


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
    buf = bytearray(8 << 20)  # one buffer for every read: no fresh pages to fault in per chunk
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while got := fh.readinto(buf):
            h.update(view[:got])
    return h.hexdigest()


class TensorReader:
    """Reads tensors of one model as copy-on-write memory maps of exactly their byte range.

    One mapping per tensor, unmapped when the tensor is freed: the pages it touched leave the
    process's RSS with it (``safe_open`` maps the whole shard and keeps every touched page until
    the shard is closed). Nothing is copied out of the page cache, and a write to a tensor only
    copies the page it touches, never the file. ``drop_pages`` lets a method give back the pages of
    an input it will touch again later (they fault back in from the page cache). A tensor whose
    offset is not aligned to its element size is read into a fresh buffer instead.
    """

    def __init__(self, model: ModelFiles) -> None:
        self.model = model
        self._shard: str | None = None
        self._fd = -1
        self._maps: dict[int, weakref.ref[mmap.mmap]] = {}  # data_ptr of a mapped tensor -> its mapping

    def get(self, name: str) -> torch.Tensor:
        import torch

        info = self.model.tensors[name]
        if info.shard != self._shard:
            self.close()
            self._fd = os.open(self.model.path / info.shard, os.O_RDONLY)
            self._shard = info.shard
        dtype = getattr(torch, DTYPE_NAMES.get(info.dtype) or INT_DTYPES[info.dtype])
        size = info.end - info.begin
        if size == 0:
            return torch.empty(info.shape, dtype=dtype)
        if info.begin % dtype.itemsize:
            return self._read(info, size).view(dtype).reshape(info.shape)
        start = info.begin - info.begin % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._fd, info.end - start, offset=start, access=mmap.ACCESS_COPY)
        mapped.madvise(mmap.MADV_WILLNEED)  # read ahead from disk now; maps nothing into RSS
        tensor = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=info.begin - start)
        self._maps = {p: m for p, m in self._maps.items() if m() is not None}
        self._maps[tensor.data_ptr()] = weakref.ref(mapped)
        return tensor.view(dtype).reshape(info.shape)

    def drop_pages(self, tensor: torch.Tensor) -> None:
        """Unmap the pages of a tensor from ``get`` from RSS; touching it again reads the file's bytes."""
        ref = self._maps.get(tensor.data_ptr())
        mapped = ref() if ref is not None else None
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)

    def _read(self, info: TensorInfo, size: int) -> torch.Tensor:
        import torch

        buf = torch.empty(size, dtype=torch.uint8)
        view = memoryview(buf.numpy())  # type: ignore[arg-type]
        done = 0
        while done < size:
            got = os.preadv(self._fd, [view[done:]], info.begin + done)
            if got <= 0:
                raise ModelFileError(
                    f"{self.model.path / info.shard}: shard shorter than its header says ({info.name})"
                )
            done += got
        return buf

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


@dataclass
class _PlannedShard:
    name: str
    header: bytes  # length prefix and JSON header, padded so the data starts 8-byte aligned
    tensors: list[tuple[str, str, tuple[int, ...]]]  # name, torch dtype name, shape (in file order)
    data_bytes: int


def plan_shards(tensors: Sequence[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int) -> list[_PlannedShard]:
    """Cut the tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor alone)."""
    groups: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    filled = 0
    for entry in tensors:
        size = _nbytes(entry[1], entry[2])
        if groups[-1] and filled + size > max_shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(entry)
        filled += size
    shards = []
    for i, group in enumerate(groups, 1):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape in group:
            size = _nbytes(dtype, shape)
            header[name] = {
                "dtype": SAFETENSORS_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
        name = SINGLE_NAME if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        shards.append(_PlannedShard(name, struct.pack("<Q", len(raw)) + raw, group, offset))
    return shards


def _nbytes(dtype: str, shape: Sequence[int]) -> int:
    n = _ITEMSIZE[dtype]
    for d in shape:
        n *= d
    return n


class ShardWriter:
    """Streams output tensors into safetensors shards laid out up front (``plan_shards``).

    Knowing every name, dtype and shape before the first tensor is computed, each shard's header
    is written first and each tensor's bytes go to the file (and into the shard's sha256) as soon as
    it is added, on a background thread, while the next tensor is computed: no shard buffer, and
    never more than one tensor waiting to be written. ``finish`` writes the index.
    """

    def __init__(self, out_dir: Path, planned: list[_PlannedShard]) -> None:
        self.out_dir = out_dir
        self._planned = planned
        self._order = [(s, j) for s in range(len(planned)) for j in range(len(planned[s].tensors))]
        self._next = 0
        self._fd = -1
        self._hash = hashlib.sha256()
        self._done: list[WrittenShard] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="still-shard-writer")
        self._writing: Future[None] | None = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` (which must not change afterwards) behind the one being written."""
        if self._next >= len(self._order):
            raise RuntimeError(f"output tensor {name} was not planned")
        s, j = self._order[self._next]
        want = self._planned[s].tensors[j]
        got = (name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
        if got != want:
            raise RuntimeError(f"output tensor {got} does not match the planned {want}")
        self.drain()
        self._writing = self._thread.submit(self._write, s, j, tensor)
        self._next += 1

    def drain(self) -> None:
        """Wait until every added tensor is written (raises what the writer raised)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def _write(self, s: int, j: int, tensor: torch.Tensor) -> None:
        shard = self._planned[s]
        if j == 0:
            self._fd = os.open(self.out_dir / shard.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._hash = hashlib.sha256()
            self._put(memoryview(shard.header))
        if tensor.numel():
            self._put(_tensor_bytes(tensor))
        if j == len(shard.tensors) - 1:
            os.close(self._fd)
            self._fd = -1
            self._done.append(WrittenShard(shard.name, len(shard.header) + shard.data_bytes, self._hash.hexdigest()))

    def _put(self, data: memoryview) -> None:
        self._hash.update(data)  # hashlib and os.write release the GIL for large buffers
        done = 0
        while done < len(data):
            done += os.write(self._fd, data[done:])

    def finish(self) -> list[WrittenShard]:
        """Wait for the last tensor and write the index (for more than one shard)."""
        self.close()
        if self._next != len(self._order):
            raise RuntimeError(f"{len(self._order) - self._next} planned output tensors were never added")
        if len(self._planned) > 1:
            weight_map = {name: s.name for s in self._planned for name, _, _ in s.tensors}
            index = {
                "metadata": {"total_size": sum(s.data_bytes for s in self._planned)},  # as transformers writes it
                "weight_map": dict(sorted(weight_map.items())),
            }
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return self._done

    def close(self) -> None:
        """Stop the writer thread (after the tensor it is writing); safe to call twice."""
        try:
            self.drain()
        finally:
            self._thread.shutdown(wait=True)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
