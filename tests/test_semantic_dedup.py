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


def test_within_cluster_duplicates_on_planted_vectors() -> None:
    from still.core.semantic_dedup import kmeans, within_cluster_duplicates

    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(300, 32)).astype(np.float32))
    planted = _unit(base[:60] + 0.02 * rng.normal(size=(60, 32)).astype(np.float32))
    emb = np.concatenate([base, planted])
    threshold = 0.95
    order = list(range(len(emb)))
    for k in (1, 8):
        labels = kmeans(emb, k, 20, seed=1)
        assert len(set(labels.tolist())) == k
        dropped = within_cluster_duplicates(emb, order, labels, threshold)
        kept = [i for i in range(len(emb)) if i not in dropped]
        assert set(dropped) == set(range(300, 360))  # each planted copy, never its original
        assert all(dropped[300 + j][0] == j for j in range(60))
        _check_against_brute_force(emb, kept, dropped, threshold)
    # --keep order decides which of a pair stays: the planted copy first keeps the copies
    dropped = within_cluster_duplicates(emb, list(range(300, 360)) + list(range(300)), np.zeros(360, int), threshold)
    assert set(dropped) == set(range(60))


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
