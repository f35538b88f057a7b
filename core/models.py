"""Model loading shared by the engines and commands: where a model comes from, its dtype and
device, its tokenizer, and its chat template.

A model is a local directory or a hub id. The hub is used only when online: with
``HF_HUB_OFFLINE=1`` (or no network) a hub id must already be in the local cache, and a miss is
one clear line, not a traceback. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from still.core.errors import StillError, UsageError, require

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.rstrip("/").count("/") > 1


def resolve_model(name: str) -> str:
    """A local directory as an absolute path, or the hub id unchanged.

    A name that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) must exist."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _looks_like_path(name):
        raise UsageError(f"model {name!r}: no such directory")
    return name


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _load_error(name: str, exc: Exception) -> StillError:
    if Path(name).is_dir():
        return StillError(f"cannot load model {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    where = "the hub is offline (HF_HUB_OFFLINE)" if hub_offline() else "the hub could not provide it"
    return StillError(
        f"model {name!r} is not a local directory, not in the Hugging Face cache, and {where}: "
        "download it first (huggingface-cli download) or pass a directory"
    )


def pick_device(device: str = "auto") -> str:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


def torch_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for a name; ``auto`` is bfloat16 on a GPU and float32 on the CPU."""
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(name: str, *, padding_side: str = "left", template: str | None = None, **kwargs: Any) -> Any:
    """The model's tokenizer, padding on ``padding_side``, with a pad token, and the chat template
    replaced by the Jinja file ``template`` when given."""
    require("transformers", "models", "loading a model")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, padding_side=padding_side, local_files_only=hub_offline(), **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if template is not None:
        tok.chat_template = read_template(template)
    return tok


def read_template(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read chat template {path}: {exc.strerror}") from exc


def load_causal_lm(name: str, *, dtype: str = "auto", device: str = "auto", **kwargs: Any) -> Any:
    """The model in eval mode on ``device`` (``auto``: GPU when present) with ``dtype``."""
    return load_model("AutoModelForCausalLM", name, dtype=dtype, device=device, **kwargs)


def load_model(auto_class: str, name: str, *, dtype: str = "auto", device: str = "auto", **kwargs: Any) -> Any:
    """A model through ``transformers.<auto_class>`` (AutoModelForCausalLM,
    AutoModelForSequenceClassification, AutoModel), in eval mode on ``device`` with ``dtype``."""
    require("torch", "models", "loading a model")
    require("transformers", "models", "loading a model")
    import transformers
    from transformers.utils import logging

    hf_logging: Any = logging
    hf_logging.disable_progress_bar()  # commands draw their own progress; weights load in seconds
    device = pick_device(device)
    try:
        model: Any = getattr(transformers, auto_class).from_pretrained(
            name, dtype=torch_dtype(dtype, device), local_files_only=hub_offline(), **kwargs
        )
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from exc
    return model.to(device).eval()


def render_chat(tokenizer: Any, messages: Sequence[Any], prefill: str = "") -> str:
    """The prompt text: the chat template with the generation prompt opened, then ``prefill``."""
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            f"model {getattr(tokenizer, 'name_or_path', '?')} has no chat template: pass --template FILE.jinja"
        )
    text: str = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return text + prefill


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a response: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
