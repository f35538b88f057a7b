"""A cached sparse teacher distribution per supervised position (``--dump-teacher-logits``).

The file is safetensors: ``offsets`` [n+1] (where each example's positions start), ``fingerprints``
[n] (xxh3 of each example's token ids: training refuses a cache made for other data, another
tokenizer or another --max-length), ``ids`` int32 [M, K] and ``weights`` float16 [M, K]: 6 bytes
per kept token. Positions are the supervised next-token predictions of each example, in order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
import xxhash

from still.core.errors import UsageError
from still.core.train_data import IGNORE, Example
from still.core.train_losses import sparse_targets


def fingerprint(example: Example) -> int:
    raw = torch.tensor(example.input_ids, dtype=torch.int32).numpy().tobytes()
    return int.from_bytes(xxhash.xxh3_64_digest(raw), "little", signed=True)


def dump_teacher_logits(
    model: Any,
    capture: Any,
    examples: Sequence[Example],
    path: str,
    *,
    top_k: int,
    samples: int,
    temperature: float,
    seed: int,
    chunk: int,
    progress: Any = None,
) -> int:
    """Run the teacher over every example and write the sparse targets to ``path`` atomically.
    Returns the number of positions written."""
    from safetensors.torch import save_file

    if top_k + samples <= 0:
        raise UsageError("--top-k and --samples are both 0: nothing to keep per position")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    device = next(model.parameters()).device
    head = capture.head_weight
    all_ids: list[torch.Tensor] = []
    all_w: list[torch.Tensor] = []
    offsets = [0]
    model.eval()
    with torch.no_grad():
        for n, ex in enumerate(examples):
            length = len(ex.input_ids)
            batch = {
                "input_ids": torch.tensor([ex.input_ids], device=device),
                "position_ids": torch.arange(length, device=device).unsqueeze(0),
                "cu_seq_lens": torch.tensor([0, length], dtype=torch.int32, device=device),
                "max_length": length,
            }
            hidden = capture(model, batch)
            where = torch.tensor([y != IGNORE for y in ex.shifted_labels()], device=device)
            h = hidden[where]
            for start in range(0, h.shape[0], chunk):
                logits = h[start : start + chunk] @ head.t()
                ids, w = sparse_targets(logits.float().cpu(), top_k, samples, generator, temperature)
                all_ids.append(ids)
                all_w.append(w.to(torch.float16))
            offsets.append(offsets[-1] + h.shape[0])
            if progress is not None:
                progress(n + 1, len(examples))
    width = top_k + samples
    tensors = {
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "fingerprints": torch.tensor([fingerprint(e) for e in examples], dtype=torch.int64),
        "ids": torch.cat(all_ids) if all_ids else torch.zeros((0, width), dtype=torch.int32),
        "weights": torch.cat(all_w) if all_w else torch.zeros((0, width), dtype=torch.float16),
    }
    meta = {"top_k": str(top_k), "samples": str(samples), "temperature": repr(temperature), "seed": str(seed)}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".still-", suffix=".part", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return int(offsets[-1])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class TeacherCache:
    """Reads a dump and hands out the sparse targets of given examples."""

    def __init__(self, path: str, examples: Sequence[Example]) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
            with safe_open(path, "pt") as f:
                self.meta = f.metadata() or {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read teacher logits from {path}: {exc}") from exc
        self.offsets = tensors["offsets"].tolist()
        self.ids = tensors["ids"]
        self.weights = tensors["weights"]
        stored = tensors["fingerprints"].tolist()
        if len(stored) != len(examples):
            raise UsageError(
                f"{path} holds teacher logits for {len(stored)} examples, this run has {len(examples)}: "
                "dump them again from the same inputs with the same options"
            )
        for i, ex in enumerate(examples):
            if stored[i] != fingerprint(ex):
                raise UsageError(
                    f"{path}: example {i} ({ex.source}:{ex.line}) does not match the dumped tokens "
                    "(other data, tokenizer, template or --max-length); dump the teacher logits again"
                )

    def rows(self, examples: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [(self.offsets[i], self.offsets[i + 1]) for i in examples]
        ids = torch.cat([self.ids[a:b] for a, b in parts])
        weights = torch.cat([self.weights[a:b] for a, b in parts]).float()
        return ids, weights
