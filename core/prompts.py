"""Prompt conventions: how a query becomes the chat a model answers.

The default is DeepSeek-R1's usage recommendation: no system prompt, the instruction
"Please reason step by step, and put your final answer within \\boxed{}." appended to the user
turn, and optionally the assistant turn forced to start with ``<think>\\n``. NoThinking (Ma et
al. 2025, "Reasoning Models Can Be Effective Without Thinking") prefills an already closed
thinking block so the model answers directly.

Pure standard library: the command line builds prompts without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_PREFILL = "<think>\n"
NOTHINKING_PREFILL = "<think>\nOkay, I think I have finished thinking.\n</think>\n\n"


@dataclass(frozen=True)
class PromptStyle:
    """How to turn a query (or an input chat) into the messages and prefill sent to a model.

    ``instruction`` is appended to the last user turn after a newline (None: nothing appended);
    ``system`` adds a system turn first (R1 recommends none); ``think_prefill`` starts the answer
    with ``<think>\\n``; ``no_thinking`` starts it with a closed thinking block instead;
    ``custom_prefill`` starts it with any text (and wins over both).
    """

    instruction: str | None = R1_INSTRUCTION
    system: str | None = None
    think_prefill: bool = False
    no_thinking: bool = False
    custom_prefill: str | None = None

    @property
    def prefill(self) -> str:
        if self.custom_prefill is not None:
            return self.custom_prefill
        if self.no_thinking:
            return NOTHINKING_PREFILL
        return THINK_PREFILL if self.think_prefill else ""

    def from_query(self, query: str) -> tuple[dict[str, Any], ...]:
        """The messages for a single-turn query."""
        return self._finish([{"role": "user", "content": query}])

    def from_messages(self, messages: list[Any]) -> tuple[dict[str, Any], ...] | None:
        """The messages for an input chat: its turns up to the last user turn (a trailing
        assistant answer is what gets regenerated). None when the chat has no user turn."""
        turns = [dict(m) for m in messages if isinstance(m, dict) and "role" in m]
        last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=-1)
        if last_user < 0:
            return None
        return self._finish(turns[: last_user + 1])

    def _finish(self, turns: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
        if self.instruction:
            last = turns[-1]
            content = last.get("content")
            text = content if isinstance(content, str) else _parts_text(content)
            if self.instruction not in text:  # data that already carries it is not told twice
                last["content"] = f"{text}\n{self.instruction}" if text else self.instruction
        if self.system is not None and not any(m["role"] == "system" for m in turns):
            turns.insert(0, {"role": "system", "content": self.system})
        return tuple(turns)

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instruction": self.instruction, "prefill": self.prefill}
        if self.system is not None:
            out["system"] = self.system
        return out


def _parts_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
