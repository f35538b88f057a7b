"""Benchmark the SemDeDup stage of `still dedup --semantic` against brute-force cosine, in one run.

    python bench/dedup_semantic.py [--n 100000] [--dim 384] [--planted 0.05] [--threshold 0.95]
    python bench/dedup_semantic.py --texts 2000 [--hidden 384]     # with a tiny embedding model

Selection (default): n random unit vectors of --dim with a share --planted of noisy copies (cosine
about 0.97 to their original), deduplicated by still's spherical k-means + within-cluster greedy
pass (core/semantic_dedup.py) and by the brute-force greedy pass over all pairs (one cluster,
blocked n × n similarities). Reports each one's time and peak traced memory, the speed-up, the
recall of the planted copies that brute force finds, and false drops (records still drops that
brute force keeps).

--texts N: generated questions with planted paraphrases (word order shuffled within clauses,
synonyms from a small table, numbers kept) embedded by a tiny random model (tests/tiny_model.py,
hidden --hidden) through still's embedding path; reports the embedding time and the same
comparison. A random model's embeddings do not know synonyms: the recall shown is the clustering's
recall relative to brute force at the same threshold, not the embedding model's quality.
Not a test: timings depend on the machine (and on other processes on it).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from still.core.semantic_dedup import (  # noqa: E402
    CLUSTER_TARGET,
    SemanticConfig,
    embed_texts,
    kmeans,
    within_cluster_duplicates,
)

SYNONYMS = {
    "find": "determine",
    "sum": "total",
    "number": "count",
    "many": "numerous",
    "apples": "fruits",
    "each": "every",
    "value": "amount",
    "first": "initial",
}


def planted_vectors(n: int, dim: int, share: float, seed: int) -> tuple[np.ndarray, dict[int, int]]:
    rng = np.random.default_rng(seed)
    n_copies = int(n * share)
    base = rng.normal(size=(n - n_copies, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    originals = rng.choice(len(base), n_copies, replace=False)
    copies = base[originals] + (0.25 / np.sqrt(dim)) * rng.normal(size=(n_copies, dim)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    emb = np.concatenate([base, copies])
    return emb, {len(base) + i: int(o) for i, o in enumerate(originals)}


def paraphrase(text: str, rng: random.Random) -> str:
    clauses = text.split(", ")
    out = []
    for clause in clauses:
        words = [SYNONYMS.get(w, w) for w in clause.split()]
        rng.shuffle(words)
        out.append(" ".join(words))
    return ", ".join(out)


def planted_texts(n: int, share: float, seed: int) -> tuple[list[str], dict[int, int]]:
    rng = random.Random(seed)
    vocab = "the a of to and is in what find how many sum product number answer value total each first then".split()
    n_copies = int(n * share)
    base = []
    for _ in range(n - n_copies):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        base.append(
            " ".join(rng.choice(vocab) for _ in range(6))
            + f" {a}, "
            + " ".join(rng.choice(vocab) for _ in range(6))
            + f" {b}"
        )
    originals = rng.sample(range(len(base)), n_copies)
    return base + [paraphrase(base[o], rng) for o in originals], {len(base) + i: o for i, o in enumerate(originals)}


def timed(fn, *args):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    started = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def compare(emb: np.ndarray, planted: dict[int, int], threshold: float, clusters: int, seed: int) -> None:
    order = list(range(len(emb)))
    k = clusters or -(-len(emb) // CLUSTER_TARGET)

    def still_stage() -> dict[int, tuple[int, float]]:
        return within_cluster_duplicates(emb, order, kmeans(emb, k, 20, seed), threshold)

    def brute_force() -> dict[int, tuple[int, float]]:
        return within_cluster_duplicates(emb, order, np.zeros(len(emb), dtype=np.int64), threshold)

    ours, t_ours, m_ours = timed(still_stage)
    brute, t_brute, m_brute = timed(brute_force)
    found_by_brute = [i for i in planted if i in brute]
    recall = sum(1 for i in found_by_brute if i in ours) / max(1, len(found_by_brute))
    false_drops = sum(1 for i in ours if i not in brute)
    print(f"records {len(emb)}, dim {emb.shape[1]}, clusters {k}, threshold {threshold}")
    print(f"  brute force : {t_brute:8.2f} s, peak {m_brute / 2**20:7.1f} MiB, dropped {len(brute)}")
    print(f"  still       : {t_ours:8.2f} s, peak {m_ours / 2**20:7.1f} MiB, dropped {len(ours)}")
    print(f"  speed-up {t_brute / t_ours:.1f}x; planted copies brute force finds: {len(found_by_brute)}/{len(planted)}")
    print(f"  recall vs brute force {recall:.4f}; false drops (still drops, brute force keeps) {false_drops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--planted", type=float, default=0.05)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--clusters", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", type=int, default=0, help="embed N generated texts with a tiny model instead")
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    if not args.texts:
        emb, planted = planted_vectors(args.n, args.dim, args.planted, args.seed)
        compare(emb, planted, args.threshold, args.clusters, args.seed)
        return
    from tiny_model import build_tiny_model

    texts, planted = planted_texts(args.texts, args.planted, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "m", hidden=args.hidden, heads=max(2, args.hidden // 64))
        started = time.perf_counter()
        emb = embed_texts(texts, SemanticConfig(model=str(model), device="cpu"))
        print(f"embedded {len(texts)} texts (hidden {args.hidden}) in {time.perf_counter() - started:.1f} s")
    compare(emb, planted, args.threshold, args.clusters, args.seed)


if __name__ == "__main__":
    main()
