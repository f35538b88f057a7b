"""Semantic deduplication (``still dedup --semantic``): SemDeDup over embeddings of a local model.

1. Embeddings of each distinct key text (``--key``) from a local model: sentence-transformers when
   it is installed and the model directory is in its format, else the mean of the transformers
   model's last hidden states over real tokens; batched, L2-normalised, float32. Cached in
   ``--embeddings FILE`` (``.npz``) with a fingerprint of the texts, the model (its files' names,
   sizes and modification times) and the settings: reused when they are unchanged, else rebuilt.
2. Near pairs (:mod:`still.core.semantic_search`): spherical k-means into ``clusters`` groups
   (default ``ceil(n / 1000)``; faiss when installed, else numpy), then each text against the
   members of its ``probes`` nearest clusters (default 3: SemDeDup's own cluster only misses the
   pairs a k-means boundary splits), in float32 matrix-product blocks.
3. Keep rule, greedy in ``--keep`` order (first seen, longest, max:FIELD): a text is a semantic
   duplicate when its cosine similarity to a text kept before it is above ``threshold``; it is
   dropped as "semantic duplicate" and the most similar kept one is its representative. Every
   compared kept pair is therefore at or below the threshold; bench/dedup_semantic.py measures
   the recall against brute force over all pairs.

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
from still.core.semantic_search import semantic_duplicates
from still.core.stats import RunStats

# SemDeDup keeps a point unless its cosine similarity to a kept one exceeds 1 - eps; 0.95 is eps 0.05
# (DataFlow's SemDeDup default; NeMo Curator's eps 0.01 is stricter, AM used bge-m3 cosine 0.9).
DEFAULT_THRESHOLD = 0.95
CLUSTER_TARGET = 1000  # records per k-means cluster when the number of clusters is automatic
# each text is compared with the members of its PROBES nearest clusters: SemDeDup's own cluster
# only (1) misses the pairs a k-means boundary splits (bench/dedup_semantic.py measures recall)
DEFAULT_PROBES = 3


@dataclass(frozen=True)
class SemanticConfig:
    model: str
    threshold: float = DEFAULT_THRESHOLD
    clusters: int = 0  # 0: ceil(n / CLUSTER_TARGET)
    probes: int = DEFAULT_PROBES
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
        if self.clusters < 0 or min(self.probes, self.iterations, self.batch_size, self.max_length) < 1:
            raise UsageError("--semantic-clusters must be >= 0; probes, iterations, batch size and length >= 1")


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
        dropped, search = semantic_duplicates(
            emb,
            sorted(range(len(texts)), key=lambda i: best[i]),
            config.threshold,
            clusters=config.clusters or math.ceil(len(texts) / CLUSTER_TARGET),
            probes=config.probes,
            iterations=config.iterations,
            seed=config.seed,
        )
        info.update(search, texts=len(texts), duplicate_texts=len(dropped))
    else:
        dropped = {}
    info.update(model=config.model, threshold=config.threshold)
    for i, (rec, t) in enumerate(held):
        if t in dropped or (not config.group_identical and best[t][1] != i):
            stats.drop("semantic duplicate")
        else:
            yield rec
