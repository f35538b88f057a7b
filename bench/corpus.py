"""Generated corpora shared by the dedup bench and tests: documents with planted near duplicates.

Documents are ~``words`` words drawn from a Zipf-like vocabulary; a fraction ``dup_rate`` are
copies of earlier documents with a few words substituted, inserted or deleted, so their exact
Jaccard similarity to the original spreads across 0.5-1.0.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator


def vocabulary(rng: random.Random, size: int = 20000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(size)]


def documents(n: int, words: int = 250, dup_rate: float = 0.1, seed: int = 0) -> Iterator[dict[str, object]]:
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(vocab))]
    originals: list[tuple[int, list[str]]] = []
    for i in range(n):
        copy_of = None
        if originals and rng.random() < dup_rate:
            copy_of, original = rng.choice(originals[-5000:])
            base = list(original)
            edits = rng.randint(0, max(1, len(base) // 12))
            for _ in range(edits):
                op = rng.random()
                pos = rng.randrange(len(base))
                if op < 0.5:
                    base[pos] = rng.choice(vocab)
                elif op < 0.75:
                    base.insert(pos, rng.choice(vocab))
                elif len(base) > 5:
                    del base[pos]
            text = base
            planted = True
        else:
            length = max(5, int(rng.gauss(words, words / 5)))
            text = rng.choices(vocab, weights=weights, k=length)
            originals.append((i, text))
            planted = False
        doc: dict[str, object] = {"id": f"d{i}", "query": " ".join(text), "planted": planted}
        if copy_of is not None:
            doc["copy_of"] = copy_of
        yield doc


def write(path: str, n: int, words: int = 250, dup_rate: float = 0.1, seed: int = 0) -> None:
    with open(path, "w") as f:
        for doc in documents(n, words, dup_rate, seed):
            f.write(json.dumps(doc) + "\n")
