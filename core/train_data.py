"""Training examples from JSONL: chat-template masking, truncation, packing and REDI pairs.

Masking renders the conversation through the model's own chat template with every assistant
content replaced by a unique sentinel, then puts the real content back verbatim. That keeps
``<think>`` reasoning that templates strip from history (R1-Distill, Qwen3) and tells template
text apart from what the model must learn: every assistant token and the end-of-turn token that
follows it are supervised, system and user tokens never are. Each turn's boundary is checked
against the template's own generation prompt (``add_generation_prompt=True``), so a template that
opens the turn with ``<think>\\n`` (R1-Distill) or inserts an empty think block (Qwen3) is
handled: whatever the model sees in the prompt at inference stays unsupervised.

Prompt and supervised pieces are tokenized separately, as the prompt and the completion are at
inference time.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from still.core.errors import BadInput, UsageError
from still.core.fields import Fields, _message_text, get_path, is_missing
from still.core.jsonl import Record
from still.core.stats import RunStats

IGNORE = -100
# End-of-turn markers of common templates; the tokenizer's own eos token is tried first.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<｜end▁of▁sentence｜>", "<|end|>", "<end_of_turn>", "</s>")
TRUNCATE_POLICIES = ("drop", "truncate")
PASSING_VERDICTS = frozenset({"correct", "pass"})
# Verdicts that say the answer is wrong (REDI negatives); truncated, timeout and error say nothing.
FAILING_VERDICTS = frozenset(
    {
        "wrong",
        "no_answer",
        "wrong_answer",
        "runtime_error",
        "compile_error",
        "time_limit",
        "memory_limit",
        "output_limit",
    }
)


@dataclass(frozen=True)
class Example:
    """One tokenized sequence; ``labels[t]`` is ``input_ids[t]`` where supervised, else IGNORE."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    line: int = 0

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    def shifted_labels(self) -> list[int]:
        """What each position predicts (the next token's label); the last position predicts nothing,
        so concatenated sequences never predict across their boundary."""
        return [*self.labels[1:], IGNORE]


@dataclass(frozen=True)
class Pair:
    """A REDI pair: a verified-correct and a wrong response to the same query."""

    positive: Example
    negative: Example


def _sentinel(k: int) -> str:
    return f"STILLSENTINEL{k}X"


def conversation(rec: Record, fields: Fields) -> list[dict[str, str]]:
    """The record as chat messages: ``messages`` as they are (plus ``response`` when they end
    without an assistant turn), else ``query``/``response`` as one user and one assistant turn."""
    explicit = fields.query_path is not None or fields.response_path is not None
    messages = None if explicit else rec.data.get("messages")
    if isinstance(messages, list) and messages:
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadInput(rec.source, rec.line, f"messages[{i}] is not an object with a role")
            out.append({"role": m["role"], "content": _message_text(m.get("content"))})
        if not any(m["role"] == "assistant" for m in out):
            out.append({"role": "assistant", "content": fields.response(rec)})
        return out
    return [{"role": "user", "content": fields.query(rec)}, {"role": "assistant", "content": fields.response(rec)}]


class ChatMasker:
    """Renders conversations through a tokenizer's chat template into (text, supervised) pieces."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise UsageError("the tokenizer has no chat template; give one with --chat-template FILE")
        eos = getattr(tokenizer, "eos_token", None)
        markers = [eos] if isinstance(eos, str) and eos else []
        self.end_markers = tuple(dict.fromkeys([*markers, *END_OF_TURN_MARKERS]))

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=self.chat_template
        )
        return str(text)

    def _end_of_turn(self, after: str) -> int:
        """Length of the supervised head of the text after an assistant content: up to and
        including the first end-of-turn marker (none: nothing more is supervised)."""
        found = [(after.find(m), m) for m in self.end_markers if m in after]
        if not found:
            return 0
        pos, marker = min(found)
        return pos + len(marker)

    def pieces(self, messages: list[dict[str, str]], where: tuple[str, int] = ("", 0)) -> list[tuple[str, bool]]:
        """(text, supervised) pieces of the rendered conversation, ending after the last assistant turn."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise BadInput(*where, "no assistant turn to train on")
        masked = [dict(m) for m in messages]
        for k, i in enumerate(turns):
            masked[i]["content"] = _sentinel(k)
        full = self._render(masked, False)
        positions = []
        for k in range(len(turns)):
            s = _sentinel(k)
            if full.count(s) != 1:
                raise UsageError(
                    f"the chat template drops or repeats assistant turn {k}; still cannot align its mask "
                    "(give a template that renders every assistant message once with --chat-template)"
                )
            positions.append(full.index(s))
        out: list[tuple[str, bool]] = []
        cursor = 0
        for k, i in enumerate(turns):
            content = messages[i]["content"]
            pos = positions[k]
            before = full[:pos]
            prompt = self._render(masked[:i], True)
            if before.startswith(prompt) and len(prompt) >= cursor:
                out.append((full[cursor : len(prompt)], False))
                filler = before[len(prompt) :]
                # Qwen3-style: the template opens an empty think block for a turn without reasoning;
                # a content that brings its own reasoning replaces it.
                if filler and not ("<think>" in filler and "</think>" in content):
                    out.append((filler, True))
            elif prompt.startswith(before) and pos >= cursor:
                tail = prompt[len(before) :]  # e.g. R1-Distill's "<think>\n" opener
                out.append((full[cursor:pos], False))
                in_content = content.startswith(tail) or (tail.strip() and content.lstrip().startswith(tail.strip()))
                if tail and not in_content:
                    out.append((tail, False))
            else:
                raise UsageError(
                    "the chat template's generation prompt does not match how it renders assistant turns; "
                    "give a training template with --chat-template"
                )
            end = pos + len(_sentinel(k))
            stop = positions[k + 1] if k + 1 < len(turns) else len(full)
            eot = self._end_of_turn(full[end:stop])
            out.append((content + full[end : end + eot], True))
            cursor = end + eot
        merged: list[tuple[str, bool]] = []
        for text, sup in out:
            if not text:
                continue
            if merged and merged[-1][1] == sup:  # one prompt string, tokenized whole as at inference
                merged[-1] = (merged[-1][0] + text, sup)
            else:
                merged.append((text, sup))
        return merged

    def encode(self, messages: list[dict[str, str]], where: tuple[str, int] = ("", 0)) -> Example:
        pieces = self.pieces(messages, where)
        ids_per_piece = self.tokenizer([t for t, _ in pieces], add_special_tokens=False)["input_ids"]
        input_ids: list[int] = []
        labels: list[int] = []
        for (_, sup), ids in zip(pieces, ids_per_piece):
            input_ids.extend(ids)
            labels.extend(ids if sup else [IGNORE] * len(ids))
        example = Example(input_ids, labels, *where)
        if example.supervised == 0:
            raise BadInput(*where, "no supervised tokens (empty assistant turns); fix or remove this row")
        return example


@dataclass(frozen=True)
class LengthPolicy:
    """``--max-length`` and ``--truncate``: drop longer rows, or keep their first max_length tokens."""

    max_length: int
    truncate: str = "drop"

    def apply(self, example: Example, stats: RunStats) -> Example | None:
        if len(example.input_ids) <= self.max_length:
            return example
        if self.truncate == "drop":
            stats.drop("longer than --max-length")
            return None
        cut = Example(
            example.input_ids[: self.max_length], example.labels[: self.max_length], example.source, example.line
        )
        if cut.supervised == 0:
            stats.drop("nothing supervised within --max-length")
            return None
        stats.extra["truncated"] = stats.extra.get("truncated", 0) + 1
        return cut


def encode_records(
    records: Iterable[Record], masker: ChatMasker, fields: Fields, policy: LengthPolicy, stats: RunStats
) -> Iterator[Example]:
    """Tokenize SFT/KD rows; every record becomes an example or a counted drop."""
    for rec in records:
        example = policy.apply(masker.encode(conversation(rec, fields), (rec.source, rec.line)), stats)
        if example is not None:
            stats.written += 1  # "written" = became a training example
            yield example


def _verdict(rec: Record, verdict_field: str) -> str | None:
    value = get_path(rec.data, verdict_field)
    return None if is_missing(value) or value is None else str(value)


def redi_pairs(
    records: Iterable[Record],
    masker: ChatMasker,
    fields: Fields,
    policy: LengthPolicy,
    stats: RunStats,
    verdict_field: str = "verify.verdict",
) -> list[Pair]:
    """Group rows by id and pair the i-th positive with the i-th negative (input order).

    Positives have a passing verdict, negatives a failing one; rows with no verdict, a verdict that
    says nothing (truncated, timeout, error) or no partner are counted as dropped.
    """
    groups: dict[str, tuple[list[Example], list[Example]]] = {}
    for rec in records:
        verdict = _verdict(rec, verdict_field)
        if verdict is None:
            raise BadInput(rec.source, rec.line, f"no verdict at {verdict_field} (redi needs `still verify` output)")
        if verdict in PASSING_VERDICTS:
            side = 0
        elif verdict in FAILING_VERDICTS:
            side = 1
        else:
            stats.drop(f"verdict {verdict}")
            continue
        example = policy.apply(masker.encode(conversation(rec, fields), (rec.source, rec.line)), stats)
        if example is None:
            continue
        groups.setdefault(fields.record_id(rec), ([], []))[side].append(example)
    pairs: list[Pair] = []
    for positives, negatives in groups.values():
        n = min(len(positives), len(negatives))
        pairs.extend(Pair(p, q) for p, q in zip(positives[:n], negatives[:n]))
        stats.written += 2 * n
        if len(positives) > n:
            stats.drop("positive without a negative", len(positives) - n)
        if len(negatives) > n:
            stats.drop("negative without a positive", len(negatives) - n)
    return pairs


def pack(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Best-fit-decreasing bins of indices whose lengths sum to at most ``capacity``.

    Ties in length are broken by a seeded shuffle so that the bins do not depend on input order
    more than the seed says; bins come out shuffled too.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin) sorted: the best fit is found by bisection
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            left, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (left - n, b))
    random.Random(seed + 1).shuffle(bins)
    return bins
