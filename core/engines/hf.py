"""The ``hf`` engine: batched transformers ``generate`` on CPU or GPU.

Requests are grouped by ``max_tokens``, sorted longest prompt first and cut into batches of
``batch_size`` (left padding), so little compute goes to padding. Sampling is done per row by a
logits processor that keeps one random stream per request, seeded with the request's seed: a
request draws exactly one uniform number per generated token from its own stream, so its sample
does not depend on the batch it ran in or the batch size. ``generate`` itself runs greedy over
the processor's output (the processor leaves one finite logit per row), which keeps its caching,
padding and stopping logic unchanged.

Results come per batch, in the engine's length order (not request order).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from still.core.engines import (
    EngineBase,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    cut_at_stop,
    render_request,
    sort_by_length,
)
from still.core.models import eos_token_ids, load_causal_lm, load_tokenizer, resolve_model


class RowSampler:
    """A logits processor that samples each row from its own random stream.

    Temperature, top-k and top-p are applied per row (vectorised), then each row draws one
    uniform number from ``random.Random(seed)`` and picks its token by inverse CDF. The returned
    scores are -inf everywhere except the chosen token, so greedy ``generate`` takes it. Rows with
    temperature 0 take the argmax.
    """

    def __init__(self, requests: Sequence[GenerationRequest]) -> None:
        import torch

        self.streams = [random.Random(r.seed) for r in requests]
        params = [r.params for r in requests]
        self.greedy = torch.tensor([p.greedy for p in params])
        self.temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params])
        self.top_p = torch.tensor([p.top_p for p in params])
        self.top_k = [p.top_k for p in params]
        self.all_greedy = bool(self.greedy.all())
        self.any_top_p = bool((self.top_p < 1).any())

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()
        device = scores.device
        chosen = scores.argmax(dim=-1)
        if not self.all_greedy:
            logits = scores / self.temperature.to(device)[:, None]
            for row, k in enumerate(self.top_k):
                if k is not None and k < logits.shape[-1]:
                    kth = torch.topk(logits[row], k).values[-1]
                    logits[row] = logits[row].masked_fill(logits[row] < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            if self.any_top_p:
                # keep the smallest set of most likely tokens whose mass reaches top_p
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                before = sorted_probs.cumsum(dim=-1) - sorted_probs
                sorted_probs = sorted_probs.masked_fill(before >= self.top_p.to(device)[:, None], 0.0)
                probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
            cdf = probs.cumsum(dim=-1)
            draws = torch.tensor([s.random() for s in self.streams], device=device, dtype=cdf.dtype)
            sampled = (cdf < (draws * cdf[:, -1])[:, None]).sum(dim=-1).clamp_(max=probs.shape[-1] - 1)
            # a zero-probability token can only be picked through rounding at the CDF's top: step back
            sampled = torch.where(probs.gather(-1, sampled[:, None])[:, 0] > 0, sampled, probs.argmax(dim=-1))
            chosen = torch.where(self.greedy.to(device), chosen, sampled)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen[:, None], 0.0)
        return out


class HFEngine(EngineBase):
    kind = "hf"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        template: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if batch_size < 1:
            from still.core.errors import UsageError

            raise UsageError(f"batch size must be >= 1, not {batch_size}")
        self.model = model
        self.path = resolve_model(model)
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(
            self.path, padding_side="left", template=template, trust_remote_code=trust_remote_code
        )
        self.lm = load_causal_lm(self.path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.device = self.lm.device
        self.eos_ids = eos_token_ids(self.lm, self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[GenerationRequest, GenerationResult]]:
        todo = list(requests)
        if not todo:
            return
        encoded = [
            self.tokenizer(render_request(self.tokenizer, r), add_special_tokens=False)["input_ids"] for r in todo
        ]
        order = sort_by_length(todo, [len(ids) for ids in encoded])
        order.sort(key=lambda i: todo[i].params.max_tokens)  # stable: length order within each limit
        batch: list[int] = []
        for i in order:
            if batch and (
                len(batch) == self.batch_size or todo[batch[0]].params.max_tokens != todo[i].params.max_tokens
            ):
                yield from self._run_batch([todo[j] for j in batch], [encoded[j] for j in batch])
                batch = []
            batch.append(i)
        if batch:
            yield from self._run_batch([todo[j] for j in batch], [encoded[j] for j in batch])

    def _run_batch(
        self, requests: list[GenerationRequest], encoded: list[list[int]]
    ) -> Iterator[tuple[GenerationRequest, GenerationResult]]:
        import torch
        import transformers

        hf: Any = transformers

        started = time.perf_counter()
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        config = hf.GenerationConfig(
            do_sample=False,
            max_new_tokens=requests[0].params.max_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        with torch.inference_mode():
            output = self.lm.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=hf.LogitsProcessorList([RowSampler(requests)]),
            )
        latency = time.perf_counter() - started
        new_tokens = output[:, width:].tolist()
        for request, prompt_ids, tokens in zip(requests, encoded, new_tokens):
            yield request, self._result(request, len(prompt_ids), tokens, latency)

    def _result(self, request: GenerationRequest, n_prompt: int, tokens: list[int], latency: float) -> GenerationResult:
        eos = set(self.eos_ids)
        end = next((i for i, t in enumerate(tokens) if t in eos), None)
        kept = tokens if end is None else tokens[:end]
        finish: FinishReason = "length" if end is None else "stop"
        n_completion = len(tokens) if end is None else end + 1
        text = self.tokenizer.decode(kept, skip_special_tokens=False)
        stop = request.params.stop
        if stop and (cut := cut_at_stop(text, stop)) is not None:
            text, finish = cut, "stop"
            n_completion = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return GenerationResult(
            text=text,
            prompt_tokens=n_prompt,
            completion_tokens=n_completion,
            finish_reason=finish,
            seed=request.seed,
            model=self.model,
            latency_s=round(latency, 4),
        )

    def close(self) -> None:
        self.lm = None
