"""Semantic deduplication (``still dedup --semantic``): SemDeDup over embeddings of a local model.

1. Embeddings of each distinct key text (``--key``) from a local model: sentence-transformers when
   it is installed and the model directory is in its format, else the mean of the transformers
   model's last hidden states over real tokens; batched, L2-normalised, float32. Cached in
   ``--embeddings FILE`` (``.npz``) with a fingerprint of the texts, the model (its files' names,
   sizes and modification times) and the settings: reused when they are unchanged, else rebuilt.
2. k-means (spherical: on unit vectors, by dot product) into ``clusters`` groups (default
   ``ceil(n / 1000)``), with faiss when it is installed, else numpy (Lloyd's algorithm, seeded
   k-means++ start).
3. Within each cluster, records in ``--keep`` order (first seen, longest, max:FIELD): a record is a
   semantic duplicate when its cosine similarity to a record already kept in the cluster is above
   ``threshold``; it is dropped as "semantic duplicate" and the kept one is its representative.
   Every kept pair inside a cluster is therefore at or below the threshold. Pairs split across
   clusters are not compared (SemDeDup's approximation; bench/dedup_semantic.py measures recall
   against brute force).

Records with the same key text are one text here. After the exact stage (which already chose among
them, e.g. ``--max-per-key`` responses of a query) they stay or go together; with
``--semantic-only`` all but the first by ``--keep`` are semantic duplicates (cosine 1). The stage reads the whole input
first (records are held in memory, with n × dim float32 embeddings) and writes in input order.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from still.core.errors import BadInput, UsageError
from still.core.fields import Fields, get_path, is_missing
from still.core.records import Record
from still.core.stats import RunStats

# SemDeDup keeps a point unless its cosine similarity to a kept one exceeds 1 - eps; 0.95 is eps 0.05
# (DataFlow's SemDeDup default; NeMo Curator's eps 0.01 is stricter, AM used bge-m3 cosine 0.9).
DEFAULT_THRESHOLD = 0.95
CLUSTER_TARGET = 1000  # records per k-means cluster when the number of clusters is automatic


@dataclass(frozen=True)
class SemanticConfig:
    model: str
    threshold: float = DEFAULT_THRESHOLD
    clusters: int = 0  # 0: ceil(n / CLUSTER_TARGET)
    iterations: int = 20
    seed: int = 0
    batch_size: int = 32
    max_length: int = 512
    device: str = "auto"
    dtype: str = "float32"
    embeddings_path: str | None = None
    key: str = "query"
    keep: str = "first"
    fields: Fields = field(default_factory=Fields)
    # after the exact stage, identical texts are its choice (e.g. --max-per-key responses of a query)
    # and stay or go together; alone, all but the first by --keep of identical texts are duplicates
    group_identical: bool = True

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise UsageError(f"--semantic-threshold must be in (0, 1), not {self.threshold}")
        if self.clusters < 0 or self.iterations < 1 or self.batch_size < 1 or self.max_length < 1:
            raise UsageError("--semantic-clusters must be >= 0; iterations, batch size and length >= 1")


# ----------------------------------------------------------------------------- embeddings
def _model_fingerprint(path: str) -> str:
    h = xxhash.xxh3_64()
    root = Path(path)
    if root.is_dir():
        for f in sorted(root.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        h.update(path.encode())
    return h.hexdigest()


def fingerprint(texts: list[str], config: SemanticConfig, model_path: str) -> str:
    h = xxhash.xxh3_128()
    h.update(f"{_model_fingerprint(model_path)}\0{config.max_length}\0{config.dtype}\0{len(texts)}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _sentence_transformers_dir(path: str) -> bool:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return (Path(path) / "modules.json").is_file()


def embed_texts(texts: list[str], config: SemanticConfig) -> Any:
    """Unit-length float32 embeddings (n × dim) of ``texts``, batched, longest first."""
    import numpy as np

    from still.core.models import load_model, load_tokenizer, resolve_model

    path = resolve_model(config.model)
    if _sentence_transformers_dir(path):
        from sentence_transformers import SentenceTransformer

        st: Any = SentenceTransformer(path, device=None if config.device == "auto" else config.device)
        out = st.encode(texts, batch_size=config.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)
    import torch
    from transformers.utils import logging

    tok = load_tokenizer(path, padding_side="right")
    hf_logging: Any = logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM's directory loads as its base model: the LM head is unused
    try:
        model = load_model("AutoModel", path, dtype=config.dtype, device=config.device)
    finally:
        hf_logging.set_verbosity(level)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    result: Any = None
    for b in range(0, len(order), config.batch_size):
        batch = order[b : b + config.batch_size]
        enc = tok(
            [texts[i] for i in batch],
            padding=True,
            truncation=True,
            max_length=config.max_length,
            return_tensors="pt",
        ).to(model.device)
        with torch.inference_mode():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float()
            pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        if result is None:
            result = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
        result[batch] = pooled
    return result if result is not None else np.zeros((0, 1), dtype=np.float32)


def cached_embeddings(texts: list[str], config: SemanticConfig, stats: RunStats) -> Any:
    """Embeddings from ``config.embeddings_path`` when its fingerprint matches, else computed (and saved)."""
    import numpy as np

    from still.core.models import resolve_model

    key = fingerprint(texts, config, resolve_model(config.model))
    path = config.embeddings_path
    if path and os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as cached:
                if str(cached["fingerprint"]) == key:
                    stats.extra.setdefault("semantic", {})["embeddings"] = "reused"
                    return cached["embeddings"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or another format: rebuilt below
    emb = embed_texts(texts, config)
    stats.extra.setdefault("semantic", {})["embeddings"] = "computed"
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".still-emb-", suffix=".npz", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, embeddings=emb, fingerprint=np.array(key))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return emb


# ----------------------------------------------------------------------------- clustering
def kmeans(x: Any, k: int, iterations: int, seed: int) -> Any:
    """Cluster labels of unit vectors ``x`` (spherical k-means; faiss when installed)."""
    import numpy as np

    n = x.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        return km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0].astype(np.int64)
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(n)]
    closest = 1.0 - x @ centres[0]
    for c in range(1, k):  # k-means++: the next centre far (in cosine distance) from the chosen ones
        weights = np.clip(closest, 0, None) ** 2
        total = weights.sum()
        pick = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centres[c] = x[pick]
        closest = np.minimum(closest, 1.0 - x @ centres[c])
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        new = _assign(x, centres)
        if _ > 0 and np.array_equal(new, labels):
            break
        labels = new
        sums = np.zeros_like(centres)
        by_label = np.argsort(labels, kind="stable")
        for members in np.split(by_label, np.flatnonzero(np.diff(labels[by_label])) + 1):
            sums[labels[members[0]]] = x[members].sum(axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        centres = np.where(empty[:, None], centres, sums / np.where(norms == 0, 1, norms))
    return labels


def _assign(x: Any, centres: Any, block: int = 65536) -> Any:
    import numpy as np

    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], block):
        out[s : s + block] = (x[s : s + block] @ centres.T).argmax(axis=1)
    return out


def within_cluster_duplicates(
    emb: Any, order: list[int], labels: Any, threshold: float
) -> dict[int, tuple[int, float]]:
    """``{dropped: (kept representative, cosine)}``: greedy in ``order`` (best first) per cluster.

    A member with no earlier member above the threshold is kept whatever was kept before it, so
    only the members with such a neighbour (few: the duplicates) go through the sequential check."""
    import numpy as np

    rank = np.empty(len(order), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    by_cluster = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[by_cluster])) + 1
    dropped: dict[int, tuple[int, float]] = {}
    for members in np.split(by_cluster, bounds):
        members = members[np.argsort(rank[members], kind="stable")]
        vecs = emb[members]
        kept = np.zeros(len(members), dtype=bool)
        for s in range(0, len(members), 1024):  # similarity rows in blocks: memory 1024 × cluster size
            e = min(s + 1024, len(members))
            sims = vecs[s:e] @ vecs[:e].T
            earlier = np.arange(e)[None, :] < np.arange(s, e)[:, None]
            suspects = np.flatnonzero((np.where(earlier, sims, -np.inf) > threshold).any(axis=1))
            kept[s:e] = True
            for r in suspects:
                pos = s + int(r)
                masked = np.where(kept[:pos], sims[r, :pos], -np.inf)
                j = int(masked.argmax())
                if masked[j] > threshold:
                    kept[pos] = False
                    dropped[int(members[pos])] = (int(members[j]), float(masked[j]))
    return dropped


# ----------------------------------------------------------------------------- the stage
def _key_text(config: SemanticConfig, rec: Record) -> str:
    if config.key == "query":
        return config.fields.query(rec)
    if config.key == "response":
        return config.fields.response(rec)
    return config.fields.query(rec) + "\n" + config.fields.response(rec)


def _priority(config: SemanticConfig, rec: Record, text: str, index: int) -> tuple[float, int]:
    if config.keep == "first":
        return (0.0, index)
    if config.keep == "longest":
        return (-float(len(text)), index)
    value = get_path(rec.data, config.keep[4:])
    if is_missing(value) or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(config.keep[4:])
    return (-float(value), index)


def semantic_dedup(records: Iterable[Record], config: SemanticConfig, stats: RunStats) -> Iterator[Record]:
    """Yield the records that are not semantic duplicates of a kept one, in input order."""
    import numpy as np

    config.validate()
    held: list[tuple[Record, int]] = []  # record, index of its distinct text
    texts: list[str] = []
    text_index: dict[bytes, int] = {}
    best: list[tuple[float, int]] = []  # per text: the best priority of its records (ends in its held index)
    for rec in records:
        try:
            text = _key_text(config, rec)
            prio = _priority(config, rec, text, len(held))
        except BadInput as exc:
            stats.reject(rec, exc.message)
            continue
        except ValueError as exc:
            stats.reject(rec, f"--keep {config.keep}: field {exc} is missing or not a number")
            continue
        digest = xxhash.xxh3_128_digest(text.encode("utf-8", "surrogatepass"))
        t = text_index.setdefault(digest, len(texts))
        if t == len(texts):
            texts.append(text)
            best.append(prio)
        else:
            best[t] = min(best[t], prio)
        held.append((rec, t))
    info = stats.extra.setdefault("semantic", {})
    if texts:
        emb = cached_embeddings(texts, config, stats)
        k = config.clusters or math.ceil(len(texts) / CLUSTER_TARGET)
        labels = kmeans(emb, k, config.iterations, config.seed)
        order = sorted(range(len(texts)), key=lambda i: best[i])
        dropped = within_cluster_duplicates(emb, order, labels, config.threshold)
        info.update(clusters=int(len(np.unique(labels))), texts=len(texts), duplicate_texts=len(dropped))
    else:
        dropped = {}
    info.update(model=config.model, threshold=config.threshold)
    for i, (rec, t) in enumerate(held):
        if t in dropped or (not config.group_identical and best[t][1] != i):
            stats.drop("semantic duplicate")
        else:
            yield rec
