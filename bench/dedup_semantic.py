"""Benchmark the SemDeDup stage of `still dedup --semantic` against brute-force cosine, in one run.

    python bench/dedup_semantic.py [--n 100000] [--dim 384] [--planted 0.05] [--threshold 0.95] [--probes 3]
    python bench/dedup_semantic.py --texts 2000 [--hidden 384 --layers 6]   # with a tiny embedding model

Selection (default): n random unit vectors of --dim with a share --planted of noisy copies (cosine
about 0.97 to their original), deduplicated by still's search (core/semantic_search.py: k-means
on a sample, each vector against the members of its --probes nearest clusters, the greedy keep
rule on the pairs found) and by brute force (blocked float32 products over all n²/2 pairs, the
same keep rule). Reports each one's wall and CPU time (CPU time is steadier on a loaded machine),
still's phases, peak traced memory (numpy's; faiss's own buffers are not traced), the speed-up,
the recall of brute force's drops and false drops (records still drops that brute force keeps).

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

from still.core.semantic_dedup import CLUSTER_TARGET, DEFAULT_PROBES, SemanticConfig, embed_texts  # noqa: E402
from still.core.semantic_search import (  # noqa: E402
    brute_force_pairs,
    greedy_duplicates,
    keep_rank,
    nearest_centres,
    probed_pairs,
    train_centres,
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


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """``(result, wall seconds, CPU seconds of all threads, peak traced memory)``: CPU time is the
    steadier measure on a loaded machine."""
    tracemalloc.start()
    started, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, cpu, peak


def compare(emb: np.ndarray, planted: dict[int, int], args: argparse.Namespace, extra_s: float = 0.0) -> None:
    """Brute force and still's search on the same vectors, in one run; ``extra_s``: embedding time."""
    order = list(range(len(emb)))
    rank = keep_rank(order)
    k = args.clusters or -(-len(emb) // CLUSTER_TARGET)
    use_faiss = {"auto": None, "faiss": True, "numpy": False}[args.kmeans]

    def still_stage() -> tuple[dict[int, tuple[int, float]], dict[str, float]]:
        phases = {}
        started = time.perf_counter()
        centres = train_centres(emb, k, 20, args.seed, use_faiss)
        phases["k-means"] = time.perf_counter() - started
        probe_lists = nearest_centres(emb, centres, args.probes)
        phases["probe lists"] = time.perf_counter() - started - sum(phases.values())
        later, earlier, sims, compared = probed_pairs(emb, probe_lists, rank, args.threshold)
        phases["pairs"] = time.perf_counter() - started - sum(phases.values())
        dropped = greedy_duplicates(later, earlier, sims, rank)
        phases["keep rule"] = time.perf_counter() - started - sum(phases.values())
        phases["compared share"] = compared / (len(emb) * (len(emb) - 1) / 2)
        return dropped, phases

    def brute_force() -> dict[int, tuple[int, float]]:
        later, earlier, sims, _ = brute_force_pairs(emb, rank, args.threshold)
        return greedy_duplicates(later, earlier, sims, rank)

    brute, t_brute, c_brute, m_brute = timed(brute_force)
    (ours, phases), t_ours, c_ours, m_ours = timed(still_stage)
    found_by_brute = [i for i in planted if i in brute]
    recall = sum(1 for i in found_by_brute if i in ours) / max(1, len(found_by_brute))
    false_drops = sum(1 for i in ours if i not in brute)
    all_recall = sum(1 for i in brute if i in ours) / max(1, len(brute))
    print(f"records {len(emb)}, dim {emb.shape[1]}, clusters {k}, probes {args.probes}, threshold {args.threshold}")
    for name, wall, cpu, peak, dropped in (
        ("brute force", t_brute, c_brute, m_brute, brute),
        ("still", t_ours, c_ours, m_ours, ours),
    ):
        print(f"  {name:12}: {wall:8.2f} s ({cpu:7.2f} s CPU), peak {peak / 2**20:7.1f} MiB, dropped {len(dropped)}")
    print("    " + ", ".join(f"{name} {v:.2f}" + ("" if "share" in name else " s") for name, v in phases.items()))
    print(f"  speed-up {t_brute / t_ours:.1f}x wall, {c_brute / c_ours:.1f}x CPU")
    print(f"  planted copies brute force finds: {len(found_by_brute)}/{len(planted)}")
    print(f"  recall vs brute force: planted {recall:.4f}, all its drops {all_recall:.4f}; false drops {false_drops}")
    if extra_s:
        print(f"  embedding {extra_s:.2f} s = {extra_s / (extra_s + t_ours):.0%} of still's embedding + search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--planted", type=float, default=0.05)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--clusters", type=int, default=0)
    parser.add_argument("--probes", type=int, default=DEFAULT_PROBES)
    parser.add_argument("--kmeans", choices=["auto", "faiss", "numpy"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", type=int, default=0, help="embed N generated texts with a tiny model instead")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2, help="6 at hidden 384 is all-MiniLM-L6-shaped")
    args = parser.parse_args()
    if not args.texts:
        emb, planted = planted_vectors(args.n, args.dim, args.planted, args.seed)
        compare(emb, planted, args)
        return
    from tiny_model import build_tiny_model

    texts, planted = planted_texts(args.texts, args.planted, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(
            Path(tmp) / "m", hidden=args.hidden, heads=max(2, args.hidden // 64), layers=args.layers
        )
        started = time.perf_counter()
        emb = embed_texts(texts, SemanticConfig(model=str(model), device="cpu"))
        embed_s = time.perf_counter() - started
        print(f"embedded {len(texts)} texts (hidden {args.hidden}, {args.layers} layers) in {embed_s:.1f} s")
    compare(emb, planted, args, embed_s)


if __name__ == "__main__":
    main()
