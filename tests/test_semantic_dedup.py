"""``still dedup --semantic``: planted semantic duplicates found, every kept pair checked by brute force."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from conftest import run_still

np = pytest.importorskip("numpy")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _check_against_brute_force(
    emb: np.ndarray, kept: list[int], dropped: dict[int, tuple[int, float]], t: float
) -> None:
    sims = emb @ emb.T
    k = np.asarray(kept)
    pair = sims[np.ix_(k, k)] - 2 * np.eye(len(k))
    assert pair.max() <= t  # every kept pair is below the threshold
    for i, (rep, cos) in dropped.items():
        assert rep in kept and sims[i, rep] == pytest.approx(cos, abs=1e-5) and cos > t


def _naive_greedy(emb: np.ndarray, order: list[int], t: float) -> dict[int, tuple[int, float]]:
    """The keep rule written out over all pairs in float64: in order, dropped when a kept one is above t."""
    sims = emb.astype(np.float64) @ emb.astype(np.float64).T
    kept: list[int] = []
    dropped: dict[int, tuple[int, float]] = {}
    for i in order:
        above = [(sims[i, j], -n, j) for n, j in enumerate(kept) if sims[i, j] > t]
        if above:
            s, _, j = max(above)
            dropped[i] = (j, float(s))
        else:
            kept.append(i)
    return dropped


def _same_drops(got: dict[int, tuple[int, float]], want: dict[int, tuple[int, float]]) -> bool:
    return {i: r for i, (r, _) in got.items()} == {i: r for i, (r, _) in want.items()} and all(
        abs(got[i][1] - want[i][1]) < 1e-5 for i in got
    )


def _planted(n: int, copies: int, dim: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(n, dim)).astype(np.float32))
    planted = _unit(base[:copies] + noise * rng.normal(size=(copies, dim)).astype(np.float32))
    return np.concatenate([base, planted])


@pytest.mark.parametrize("use_faiss", [False, True])
def test_semantic_duplicates_on_planted_vectors(use_faiss: bool) -> None:
    from still.core.semantic_search import semantic_duplicates

    if use_faiss:
        pytest.importorskip("faiss")
    emb = _planted(300, 60, 32, 0.02, 0)
    threshold = 0.95
    order = list(range(len(emb)))
    for k, probes in ((1, 1), (8, 1), (8, 3), (8, 8)):
        dropped, info = semantic_duplicates(
            emb, order, threshold, clusters=k, probes=probes, iterations=20, seed=1, use_faiss=use_faiss
        )
        assert info["clusters"] == k and info["probes"] == probes
        assert info["kmeans"] == ("faiss" if use_faiss and k > 1 else "numpy")
        kept = [i for i in range(len(emb)) if i not in dropped]
        assert set(dropped) == set(range(300, 360))  # each planted copy, never its original
        assert all(dropped[300 + j][0] == j for j in range(60))
        _check_against_brute_force(emb, kept, dropped, threshold)
        assert _same_drops(dropped, _naive_greedy(emb, order, threshold))
    # --keep order decides which of a pair stays: the planted copy first keeps the copies
    first_copies = list(range(300, 360)) + list(range(300))
    dropped, _ = semantic_duplicates(emb, first_copies, threshold, clusters=4, probes=2, iterations=20, seed=1)
    assert set(dropped) == set(range(60))


def test_all_probes_equal_brute_force_and_the_keep_rule() -> None:
    """Chains and groups of near copies: probing every cluster finds exactly brute force's pairs,
    and the keep rule equals the naive greedy pass over all pairs."""
    from still.core.semantic_search import (
        brute_force_pairs,
        greedy_duplicates,
        keep_rank,
        nearest_centres,
        probed_pairs,
        semantic_duplicates,
        train_centres,
    )

    rng = np.random.default_rng(3)
    base = _unit(rng.normal(size=(40, 16)).astype(np.float32))
    # walks of small steps: neighbours are above the threshold, the ends of a walk are not
    walks = [base]
    for _ in range(6):
        walks.append(_unit(walks[-1] + 0.06 * rng.normal(size=base.shape).astype(np.float32)))
    emb = np.concatenate(walks)[rng.permutation(len(base) * len(walks))]
    threshold = 0.95
    order = [int(i) for i in rng.permutation(len(emb))]
    rank = keep_rank(order)
    centres = train_centres(emb, 6, 10, seed=0, use_faiss=False)
    all_pairs = probed_pairs(emb, nearest_centres(emb, centres, 6), rank, threshold)
    brute = brute_force_pairs(emb, rank, threshold)

    def as_set(pairs: tuple) -> set[tuple[int, int]]:
        return set(zip(pairs[0].tolist(), pairs[1].tolist()))

    assert as_set(all_pairs) == as_set(brute) and len(all_pairs[0]) == len(brute[0]) > 40
    naive = _naive_greedy(emb, order, threshold)
    assert 0 < len(naive) < len(emb) - len(base)  # chains: some walk steps are kept
    assert _same_drops(greedy_duplicates(*brute[:3], rank), naive)
    dropped, _ = semantic_duplicates(emb, order, threshold, clusters=6, probes=6, iterations=10, seed=0)
    assert _same_drops(dropped, naive)
    # fewer probes compare fewer pairs; a missed pair only ever keeps a duplicate here
    one = probed_pairs(emb, nearest_centres(emb, centres, 1), rank, threshold)
    assert as_set(one) <= as_set(brute) and one[3] < all_pairs[3]


def test_a_second_probe_finds_a_pair_split_by_the_clusters() -> None:
    from still.core.semantic_search import keep_rank, nearest_centres, probed_pairs

    # two centres; a and b are a near pair on either side of the boundary between them
    centres = np.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    a, b = _unit(np.asarray([[1.0, 0.96, 0.3], [0.96, 1.0, 0.3]], dtype=np.float32))
    emb = np.stack([a, b])
    assert float(a @ b) > 0.99
    rank = keep_rank([0, 1])
    lists = nearest_centres(emb, centres, 2)
    assert lists.tolist() == [[0, 1], [1, 0]]
    assert len(probed_pairs(emb, lists[:, :1], rank, 0.95)[0]) == 0  # SemDeDup's own cluster only
    later, earlier, sims, _ = probed_pairs(emb, lists, rank, 0.95)
    assert later.tolist() == [1] and earlier.tolist() == [0] and sims[0] == pytest.approx(float(a @ b))


def _records(tmp_path: Path) -> tuple[Path, list[str], list[int]]:
    rng = random.Random(0)
    topics = "apples trains rivers primes circles music chess rain bridges clocks".split()
    words = "the a of to and is in what find how many sum product number answer value total each first then".split()
    texts = []
    for _ in range(40):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        filler = " ".join(rng.choice(words) for _ in range(8))
        texts.append(f"How many {rng.choice(topics)} are there if {a} {rng.choice(topics)} meet {b} {filler}")
    planted = list(range(40, 50))
    texts += [texts[i] + " please" for i in range(10)]  # same question, one more word
    texts.append(texts[3])  # an exact duplicate, for the exact stage
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"id": i, "query": t, "response": "r"}) + b"\n" for i, t in enumerate(texts)))
    return src, texts, planted


def _direct_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float64).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")["input_ids"]
            out.append(model(input_ids=ids).last_hidden_state[0].mean(0).numpy())
    return _unit(np.asarray(out))


def test_dedup_semantic_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    src, texts, planted = _records(tmp_path)
    threshold = 0.99
    cache = tmp_path / "emb.npz"
    # --exact-only: MinHash would take the planted copies first (they are textual near duplicates too)
    args = f"dedup --exact-only --semantic {tiny_model} --semantic-threshold {threshold} --semantic-clusters 3"
    args += f" --embeddings {cache}"
    res = run_still(f"{args} --embed-batch-size 7 --stats {tmp_path}/s1.json {src}")
    kept = [orjson.loads(x)["id"] for x in res.lines()]
    stats = json.loads((tmp_path / "s1.json").read_text())
    assert stats["dropped"] == {"exact duplicate": 1, "semantic duplicate": len(planted)}
    assert stats["semantic"]["embeddings"] == "computed"
    assert kept == list(range(40))  # input order; the planted copies and the exact copy gone
    emb = _direct_embeddings(tiny_model, texts)
    sims = emb @ emb.T
    for i in planted:
        assert sims[i, i - 40] > threshold
    k = np.asarray(kept)
    assert (sims[np.ix_(k, k)] - 2 * np.eye(len(k))).max() <= threshold  # brute force over every kept pair
    # the cache is reused when nothing changed, and the output is the same bytes
    again = run_still(f"{args} --stats {tmp_path}/s2.json {src}")
    assert again.stdout == res.stdout
    assert json.loads((tmp_path / "s2.json").read_text())["semantic"]["embeddings"] == "reused"
    # another threshold reuses the cache too; other texts rebuild it
    src.write_bytes(src.read_bytes() + b'{"id": 99, "query": "a new question about chess", "response": "r"}\n')
    third = run_still(f"{args} --semantic-only --stats {tmp_path}/s3.json {src}")
    s3 = json.loads((tmp_path / "s3.json").read_text())
    assert s3["semantic"]["embeddings"] == "computed"
    assert s3["dropped"] == {"semantic duplicate": len(planted) + 1}  # the exact copy is a cosine-1 duplicate
    assert orjson.loads(third.lines()[-1])["id"] == 99


def test_semantic_usage_errors(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"query": "q"}\n')
    assert "--semantic" in run_still(f"dedup --semantic-only {src}", code=2).stderr
    assert "--mark" in run_still(f"dedup --semantic {tmp_path} --mark {src}", code=2).stderr
