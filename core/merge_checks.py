"""What is checked before a merge writes anything: one reason to refuse per function.

Refusals raise ``MergeRefused`` (exit 3) naming the model directories and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from still.core.errors import StillError
from still.core.safetensors_io import ModelFiles

# Names a tied model's output projection goes by, and the input embedding it is tied to.
LM_HEAD = "lm_head.weight"
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")


class MergeRefused(StillError):
    exit_code = 3


def read_config(path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_text())
    except FileNotFoundError as exc:
        raise MergeRefused(f"{path}: no config.json (a Hugging Face model directory is needed)") from exc
    except ValueError as exc:
        raise MergeRefused(f"{path}/config.json: not JSON ({exc})") from exc
    return config


def embedding_name(model: ModelFiles) -> str | None:
    for name in model.tensors:
        if name.endswith(EMBED_SUFFIXES):
            return name
    return None


def check_distinct(paths: Sequence[Path], contents: Sequence[Hashable]) -> None:
    """mergekit collapses duplicate entries silently (its #214); refuse them instead.

    ``contents`` identifies each model's weights (shard sizes and headers, confirmed by sha256).
    """
    seen: dict[str, Path] = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise MergeRefused(f"{path}: given twice (as {seen[real]} too); each input model must be distinct")
        seen[real] = path
    by_content: dict[Hashable, Path] = {}
    for path, content in zip(paths, contents):
        if content in by_content:
            raise MergeRefused(f"{path}: same weights as {by_content[content]}; each input model must be distinct")
        by_content[content] = path


def check_vocab(paths: Sequence[Path], configs: Sequence[dict[str, Any]], models: Sequence[ModelFiles]) -> None:
    ref_path, ref_vocab, ref_rows = paths[0], configs[0].get("vocab_size"), _embed_rows(models[0])
    for path, config, model in zip(paths[1:], configs[1:], models[1:]):
        vocab, rows = config.get("vocab_size"), _embed_rows(model)
        if vocab != ref_vocab or rows != ref_rows:
            raise MergeRefused(
                f"vocabulary size mismatch: {ref_path} has vocab_size {ref_vocab} ({ref_rows} embedding rows), "
                f"{path} has {vocab} ({rows}); averaging would mix unrelated rows (mergekit truncates silently). "
                "Merge models fine-tuned from the same base"
            )


def _embed_rows(model: ModelFiles) -> int | None:
    name = embedding_name(model)
    return model.tensors[name].shape[0] if name else None


def tokenizer_vocab(path: Path) -> dict[str, int] | None:
    """Token → id from tokenizer.json (model vocab and added tokens), else vocab.json; None if neither."""
    tok = path / "tokenizer.json"
    if tok.exists():
        data = json.loads(tok.read_text())
        raw = data.get("model", {}).get("vocab", {})
        vocab: dict[str, int] = dict(raw) if isinstance(raw, dict) else {str(p[0]): i for i, p in enumerate(raw)}
        for added in data.get("added_tokens", []):
            vocab[added["content"]] = added["id"]
        return vocab
    if (path / "vocab.json").exists():
        loaded: dict[str, int] = json.loads((path / "vocab.json").read_text())
        return loaded
    return None


def check_tokenizers(paths: Sequence[Path], policy: str) -> None:
    """Same vocabulary size is not enough: the same token must have the same id in every model."""
    if policy == "base":
        return
    ref = tokenizer_vocab(paths[0])
    if ref is None:
        raise MergeRefused(
            f"{paths[0]}: no tokenizer.json or vocab.json to copy and compare; "
            "add the tokenizer files, or pass --tokenizer-policy base to merge without the check"
        )
    for path in paths[1:]:
        other = tokenizer_vocab(path)
        if other is None:
            raise MergeRefused(
                f"{path}: no tokenizer.json or vocab.json to compare with {paths[0]}'s; "
                "pass --tokenizer-policy base to merge without the check"
            )
        if other != ref:
            diff = sorted(set(ref.items()) ^ set(other.items()))
            token, tid = diff[0]
            raise MergeRefused(
                f"tokenizers differ: {paths[0]} and {path} give different ids ({len(diff)} token/id pairs differ, "
                f"e.g. {token!r} -> {tid}); merged embedding rows would mix unrelated tokens. Pass "
                "--tokenizer-policy base to keep the base's tokenizer and merge rows by id anyway"
            )


def source_name(model: ModelFiles, name: str) -> str | None:
    """The tensor of ``model`` that plays the role of ``name`` (a tied model's lm_head is its embedding)."""
    if name in model.tensors:
        return name
    if name == LM_HEAD:
        return embedding_name(model)
    return None


def check_tensors(paths: Sequence[Path], models: Sequence[ModelFiles]) -> list[str]:
    """Same tensor names and shapes everywhere (tied models stand in their embedding for lm_head)."""
    base_path, base = paths[0], models[0]
    names = sorted(base.tensors)
    base_tied = LM_HEAD not in base.tensors
    for path, model in zip(paths[1:], models[1:]):
        extra = set(model.tensors) - set(names)
        if base_tied and extra == {LM_HEAD}:
            raise MergeRefused(
                f"{path} has an untied {LM_HEAD} but {base_path} ties it to the embedding; "
                "use the untied model as --base (the output follows the base's config)"
            )
        missing = [n for n in names if source_name(model, n) is None]
        if missing or extra:
            what = f"lacks {missing[0]}" if missing else f"has {sorted(extra)[0]} that {base_path} lacks"
            raise MergeRefused(
                f"tensor names differ: {path} {what} ({len(missing)} missing, {len(extra)} extra); "
                "only models of one architecture can be merged"
            )
        for name in names:
            src = source_name(model, name)
            assert src is not None
            a, b = base.tensors[name].shape, model.tensors[src].shape
            if a != b:
                raise MergeRefused(f"shape mismatch for {name}: {base_path} has {list(a)}, {path} has {list(b)}")
    return names
