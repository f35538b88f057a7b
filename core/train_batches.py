"""Rows and padding-free micro-batches for distill-train.

A row is what the sampler shuffles: a bin of packed examples (sft, kd) or one REDI pair. A
micro-batch concatenates its rows' sequences into one flat sequence with restarting
``position_ids`` and ``cu_seq_lens`` (see core/train_model.py), next-token labels that never cross a
sequence boundary, per-token loss weights and ``loss_units``: what the loss of an optimizer step is
divided by (supervised tokens for sft/kd, pairs for redi), summed over the step's micro-batches
before any of them runs, so gradient accumulation and data parallelism give the same step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from still.core.train_data import IGNORE, Example, Pair, pack


@dataclass(frozen=True)
class Row:
    examples: tuple[int, ...]  # indices into the example list
    pair: bool = False  # REDI: (positive, negative)


def sft_rows(examples: Sequence[Example], capacity: int, packing: bool, seed: int) -> list[Row]:
    if not packing:
        return [Row((i,)) for i in range(len(examples))]
    return [Row(tuple(b)) for b in pack([len(e.input_ids) for e in examples], capacity, seed)]


def pair_rows(pairs: Sequence[Pair]) -> tuple[list[Example], list[Row]]:
    examples: list[Example] = []
    rows = []
    for p in pairs:
        rows.append(Row((len(examples), len(examples) + 1), pair=True))
        examples.extend((p.positive, p.negative))
    return examples, rows


class RowDataset(torch.utils.data.Dataset[Row]):
    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]


class Collator:
    """Rows -> one flat, padding-free micro-batch (batch dimension 1)."""

    def __init__(self, examples: Sequence[Example], redi_alpha: float = 0.8, teacher_cache: Any = None) -> None:
        self.examples = examples
        self.redi_alpha = redi_alpha
        self.teacher_cache = teacher_cache

    def __call__(self, rows: list[Row]) -> dict[str, Any]:
        ids: list[int] = []
        positions: list[int] = []
        targets: list[int] = []
        weights: list[float] = []
        edges = [0]
        units = 0.0
        cached: list[int] = []
        for row in rows:
            for k, index in enumerate(row.examples):
                ex = self.examples[index]
                shifted = ex.shifted_labels()
                n_sup = sum(1 for y in shifted if y != IGNORE)
                if row.pair:
                    # REDI: −log π(y⁺)/|y⁺| + α·log π(y⁻)/|y⁻|; CE is −log π, so the negative gets −α.
                    w = (1.0 if k == 0 else -self.redi_alpha) / max(1, n_sup)
                else:
                    w = 1.0
                    units += n_sup
                ids.extend(ex.input_ids)
                positions.extend(range(len(ex.input_ids)))
                targets.extend(shifted)
                weights.extend(w if y != IGNORE else 0.0 for y in shifted)
                edges.append(len(ids))
                cached.append(index)
            if row.pair:
                units += 1
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "shift_labels": torch.tensor(targets, dtype=torch.long),
            "loss_weights": torch.tensor(weights, dtype=torch.float32),
            "cu_seq_lens": torch.tensor(edges, dtype=torch.int32),
            "max_length": max(b - a for a, b in zip(edges[:-1], edges[1:])),
            "loss_units": torch.tensor(units, dtype=torch.float32),
        }
        # `labels` lets the Trainer know the batch carries a loss; it is never read by the model.
        batch["labels"] = batch["input_ids"]
        if self.teacher_cache is not None:
            t_ids, t_w = self.teacher_cache.rows(cached)
            batch["teacher_ids"] = t_ids
            batch["teacher_weights"] = t_w
        return batch
