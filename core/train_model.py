"""Loading the student and teacher for distill-train, and padding-free attention on any device.

Micro-batches are one flat sequence (batch 1) holding several examples back to back, with
``position_ids`` restarting at 0 for each and ``cu_seq_lens_q/k`` marking where each starts (the
keyword arguments FlashAttention-2 takes for variable-length batches). With flash-attn installed
on a GPU, transformers' ``flash_attention_2`` reads them as they are. Elsewhere the ``still_varlen``
attention registered here runs PyTorch's SDPA once per example: attention never crosses an example
boundary and costs Σ len², not (Σ len)², with no mask materialised.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from still.core.errors import MissingExtra, UsageError

VARLEN = "still_varlen"
ATTENTION_CHOICES = ("auto", "varlen", "sdpa", "eager", "flash_attention_2")


def _varlen_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention per packed example (query/key/value: [1, heads, tokens, head_dim])."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    lengths = bounds.diff().tolist()
    p = dropout if module.training else 0.0
    # split, not slicing: the backward of a split is one concatenation, while every slice's backward
    # writes its gradient into a zero-filled copy of the whole packed tensor (quadratic in examples).
    outs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=p)
        for q, k, v in zip(*(torch.split(t, lengths, dim=2) for t in (query, key, value)))
        if q.shape[2] > 0
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register_varlen_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, _varlen_attention)


def attention_implementation(choice: str) -> str:
    """The transformers attention name for ``--attn`` (auto: FlashAttention-2 on CUDA when
    flash-attn is installed, else per-example SDPA)."""
    if choice == "auto":
        if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        choice = "varlen"
    if choice == "varlen":
        register_varlen_attention()
        return VARLEN
    return choice


def load_causal_lm(path: str, attn: str, dtype: torch.dtype | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=attention_implementation(attn), dtype=dtype
        )
    except OSError as exc:
        raise UsageError(f"cannot load a model from {path}: {exc}") from exc


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise UsageError(f"cannot load a tokenizer from {path}: {exc}") from exc


def apply_lora(model: Any, rank: int, alpha: int, dropout: float, targets: str) -> Any:
    """Wrap the model with LoRA adapters (peft); the LM head stays frozen and un-adapted."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise MissingExtra("peft", "train", "--lora-r") from exc
    target: str | list[str] = targets if targets == "all-linear" else [t for t in targets.split(",") if t]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def base_model(model: Any) -> Any:
    """The transformers model under DDP/FSDP/DeepSpeed wrappers and a peft wrapper."""
    while hasattr(model, "module") and not hasattr(model, "get_decoder"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class HiddenCapture:
    """Runs the model's own forward (so DDP/FSDP hooks fire) but keeps the decoder's final hidden
    states and computes logits for one position only; losses apply the LM head in chunks."""

    def __init__(self, model: Any) -> None:
        inner = base_model(model)
        self.head = inner.get_output_embeddings()
        self._hidden: torch.Tensor | None = None
        inner.get_decoder().register_forward_hook(self._keep)

    def _keep(self, module: Any, args: Any, output: Any) -> None:
        self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            cu_seq_lens_q=batch["cu_seq_lens"],
            cu_seq_lens_k=batch["cu_seq_lens"],
            max_length_q=batch["max_length"],
            max_length_k=batch["max_length"],
            logits_to_keep=1,
            use_cache=False,
        )
        hidden, self._hidden = self._hidden, None
        assert hidden is not None, "the decoder's forward hook did not run"
        return hidden.reshape(-1, hidden.shape[-1])

    @property
    def head_weight(self) -> torch.Tensor:
        if getattr(self.head, "bias", None) is not None:
            raise UsageError("LM heads with a bias are not supported")
        weight: torch.Tensor = self.head.weight
        return weight
