"""A reward model as the verifier of responses no rule can check (``still verify --reward-model M``).

Records of the "other" category (no reference answer, no tests, no choices; see
:func:`still.core.verify.has_no_reference`) pass the rule-based checks untouched and are scored
here by a sequence-classification model (``AutoModelForSequenceClassification``), as DeepDistill
scores its "other" responses with a reward model:

* input: the chat template over ``[user: query, assistant: final part of the response]`` (the text
  after the last ``</think>`` when the thinking is closed; reward models are trained on answers,
  not traces), tokenised without extra special tokens (the template carries them), cut to
  ``max_length`` tokens (counted as ``truncated`` and marked in the record);
* score: ``sigmoid(logit)`` for a head with one output (a Bradley-Terry reward mapped to 0..1);
  for a head with several outputs, the softmax probability of the last label (the positive class
  of a binary classifier);
* verdict: ``correct`` when ``score > threshold`` (DeepDistill's "other" threshold 0.7 by default,
  the same strict comparison as ``still grade``), else ``wrong``, so ``grade``, ``sample --passing``
  and ``--exit-status`` read it like any verdict; ``method`` is ``reward/<model>``.

Batches of ``batch_size``, right padded (the classification head reads the last non-pad token).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from still.core.errors import BadInput, UsageError
from still.core.fields import Fields
from still.core.models import load_model, load_tokenizer, resolve_model
from still.core.records import Record
from still.core.stats import RunStats

DEEPDISTILL_OTHER_THRESHOLD = 0.7


@dataclass(frozen=True)
class RewardConfig:
    model: str
    threshold: float = DEEPDISTILL_OTHER_THRESHOLD
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    max_length: int = 4096
    template: str | None = None
    fields: Fields = field(default_factory=Fields)
    chunk: int = 256  # records scored together

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"--reward-threshold must be in [0, 1], not {self.threshold}")
        if self.batch_size < 1 or self.max_length < 2:
            raise UsageError("--reward-batch-size must be >= 1 and --reward-max-length >= 2")


def final_part(response: str) -> str:
    """The part of a response after its thinking, when the thinking is closed."""
    end = response.rfind("</think>")
    return response[end + len("</think>") :].strip() if end >= 0 else response.strip()


def normalise(logits: list[float]) -> float:
    """The documented 0..1 score: sigmoid of a single logit, else softmax of the last label."""
    if len(logits) == 1:
        x = logits[0]
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return exps[-1] / math.fsum(exps)


class RewardModel:
    """A sequence-classification model and its tokenizer, scoring token-id lists in batches."""

    def __init__(self, config: RewardConfig) -> None:
        path = resolve_model(config.model)
        self.tokenizer = load_tokenizer(path, padding_side="right", template=config.template)
        self.model = load_model("AutoModelForSequenceClassification", path, dtype=config.dtype, device=config.device)
        if self.model.config.pad_token_id is None:  # the head finds each row's last token by it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id = int(self.model.config.pad_token_id)
        self.batch_size = config.batch_size
        self.max_length = config.max_length

    def encode(self, query: str, response: str) -> tuple[list[int], bool]:
        """Token ids of the chat-templated pair, and whether they were cut to ``max_length``."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(f"reward model {self.tokenizer.name_or_path} has no chat template: pass --reward-template")
        messages = [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[: self.max_length], len(ids) > self.max_length

    def logits(self, sequences: list[list[int]]) -> list[list[float]]:
        import torch

        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out: list[list[float]] = [[] for _ in sequences]
        device = self.model.device
        for b in range(0, len(order), self.batch_size):
            batch = order[b : b + self.batch_size]
            width = max(len(sequences[i]) for i in batch)
            rows = [sequences[i] + [self.pad_id] * (width - len(sequences[i])) for i in batch]
            masks = [[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in batch]
            with torch.inference_mode():
                result = self.model(
                    input_ids=torch.tensor(rows, device=device), attention_mask=torch.tensor(masks, device=device)
                ).logits.float()
            for i, row in zip(batch, result.tolist()):
                out[i] = row
        return out

    def close(self) -> None:
        self.model = None


class _Rewarding:
    def __init__(self, config: RewardConfig, wanted: Any, stats: RunStats) -> None:
        config.validate()
        self.config = config
        self.wanted = wanted
        self.stats = stats
        self.counts = {"scored": 0, "correct": 0, "wrong": 0, "truncated": 0}

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        model = RewardModel(self.config)
        try:
            chunk: list[Record] = []
            for rec in records:
                chunk.append(rec)
                if len(chunk) >= self.config.chunk:
                    yield from self._chunk(model, chunk)
                    chunk = []
            yield from self._chunk(model, chunk)
        finally:
            model.close()
            verdicts = self.stats.extra.get("verdicts")
            if isinstance(verdicts, dict):
                self.stats.extra["verdicts"] = dict(sorted(verdicts.items()))
            self.stats.extra["reward"] = {"model": self.config.model, "threshold": self.config.threshold, **self.counts}

    def _chunk(self, model: RewardModel, chunk: list[Record]) -> Iterator[Record]:
        fields = self.config.fields
        todo: list[tuple[int, list[int], bool]] = []
        bad: set[int] = set()
        for i, rec in enumerate(chunk):
            if not self.wanted(rec):
                continue
            try:
                ids, cut = model.encode(fields.query(rec), final_part(fields.response(rec)))
            except BadInput as exc:
                self.stats.reject(rec, exc.message)
                bad.add(i)
                continue
            todo.append((i, ids, cut))
        logits = model.logits([ids for _, ids, _ in todo]) if todo else []
        scored = {i: (cut, row) for (i, _, cut), row in zip(todo, logits)}
        verdicts = self.stats.extra.setdefault("verdicts", {})
        for i, rec in enumerate(chunk):
            if i in bad:
                continue
            if i in scored:
                cut, row = scored[i]
                self._annotate(rec, row, cut, verdicts)
            yield rec

    def _annotate(self, rec: Record, logits: list[float], cut: bool, verdicts: dict[str, int]) -> None:
        score = normalise(logits)
        verdict = "correct" if score > self.config.threshold else "wrong"
        reason = f"reward {score:.4f} {'>' if verdict == 'correct' else '<='} threshold {self.config.threshold}"
        reward: dict[str, Any] = {"logits": [float(f"{v:.6g}") for v in logits], "threshold": self.config.threshold}
        if cut:
            reward["truncated"] = True
            self.counts["truncated"] += 1
        rec.changed()["verify"] = {
            "verdict": verdict,
            "score": float(f"{score:.6g}"),
            "extracted": None,
            "method": f"reward/{self.config.model}",
            "reason": reason,
            "reward": reward,
        }
        self.counts["scored"] += 1
        self.counts[verdict] += 1
        verdicts[verdict] = verdicts.get(verdict, 0) + 1


def reward_records(records: Iterable[Record], config: RewardConfig, wanted: Any, stats: RunStats) -> Iterator[Record]:
    """Yield records in order; those ``wanted`` (the "other" category) get a reward verdict."""
    return _Rewarding(config, wanted, stats).run(records)
