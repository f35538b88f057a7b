"""Answer extraction: where in a response the final answer is, read in bounded, linear passes.

Every rule here runs in the parent process on untrusted model text, so each one is one pass over
a capped region (no backtracking regex over the whole response): a degenerate generation loop
(20,000 ``\\boxed{`` or an ``Answer:`` line followed by megabytes of spaces) costs milliseconds.

Order (docs/verify-math.md):

1. the region: after the last ``</think>``, cut at the first chat-template token that starts
   another turn (``<|im_start|>``, ``<|eot_id|>`` ...), then only its last :data:`REGION_CAP`
   characters;
2. anchored forms, first hit wins: the last group of ``\\boxed{}``/``\\fbox{}`` (several boxes
   separated only by commas, "and", "or" are one answer, a list), the last "final answer is ..." /
   "Final Answer: ..." sentence, the last ``Answer:`` / ``A:`` line;
3. the ``--fallback`` rules asked for (``last-number``, ``last-math``, ``last-line``);
4. unless strict: a response that is only a number (``-5``, ``1,000.99``, ``$\\frac{10}{9}$``).

What is left (not strict) goes to math-verify's own extraction in the worker process.
"""

from __future__ import annotations

import re
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
FALLBACKS = ("last-number", "last-math", "last-line")

REGION_CAP = 16_000  # characters of the answer region read (its end, where answers are)
MV_REGION_CAP = 4_000  # of those, what math-verify's extraction reads (its regexes are quadratic on some text)
ANSWER_CAP = 1_000  # characters after an anchor that can belong to the answer
_GAP_CAP = 80  # characters between two boxes of one answer group

# Chat-template tokens that end the model's turn: what follows is a hallucinated next turn.
_TURN_END_RE = re.compile(
    r"<\|(?:im_start|im_end|endoftext|eot_id|end|user|assistant|start_header_id)\|>"
    r"|<｜(?:end▁of▁sentence|User|Assistant)｜>|<end_of_turn>|<start_of_turn>|</s>"
)


def answer_region(response: str, finish_reason: Any = None) -> tuple[str | None, str]:
    """The text that may hold the final answer, or ``(None, why)`` when the response is truncated.

    The region is capped to its last :data:`REGION_CAP` characters, so every later rule is bounded.
    """
    if isinstance(finish_reason, str) and finish_reason.lower() == "length":
        return None, "finish_reason is length"
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        region = response[close + len(THINK_CLOSE) :]
        if THINK_OPEN in region:
            return None, "a later <think> block never closed"
    elif THINK_OPEN in response:
        return None, "reasoning never closed (<think> without </think>)"
    else:
        region = response
    turn_end = _TURN_END_RE.search(region)
    if turn_end is not None and region[: turn_end.start()].strip():
        region = region[: turn_end.start()]
    if len(region) > REGION_CAP:
        region = region[-REGION_CAP:]
    return region, ""


# ----------------------------------------------------------------------------------------------
# Boxes: one pass pairs every brace, so finding all boxes is linear


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)


def brace_pairs(text: str, start: int = 0) -> dict[int, int]:
    """Position of each ``{`` from ``start`` on mapped to its matching ``}`` (escaped ``\\{``
    ``\\}`` skipped): one regex pass that steps over plain text in C."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN_RE.finditer(text, start):
        ch = m.group()
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Every complete outermost ``\\boxed{...}``/``\\fbox{...}`` (also ``\\boxed 5``): (start, end, content).

    A box inside another box is part of it, not a second answer (and is never copied out).
    """
    found: list[tuple[int, int, str]] = []
    pairs: dict[int, int] | None = None
    outer_end = -1
    n = len(text)
    for m in _BOX_RE.finditer(text):
        if m.start() < outer_end:
            continue
        j = m.end()
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "{":
            if pairs is None:
                pairs = brace_pairs(text, m.start())
            close = pairs.get(j)
            if close is not None:
                found.append((m.start(), close + 1, text[j + 1 : close]))
                outer_end = close + 1
        elif j > m.end():  # "\boxed 5": one token
            k = j
            while k < n and k - j < 100 and not text[k].isspace() and text[k] != "$":
                k += 1
            if k > j:
                found.append((m.start(), k, text[j:k]))
                outer_end = k
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (also ``\\boxed 5``)."""
    found = boxes(text)
    return found[-1][2] if found else None


_BOX_GAP_RE = re.compile(
    r"(?:\s|\$|,|;|\\quad|\\qquad|\\[,;: ]|\\text\{\s*(?:and|or|,)?\s*\}|\\(?:text|mathrm)\s*\{\s*\}|and|or|&"
    r"|[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=)*"  # "x=\boxed{3}, y=\boxed{4}"
)


def boxed_group(text: str) -> list[str]:
    """The contents of the last run of boxes that are one answer (``\\boxed{1}, \\boxed{2}``).

    Boxes count together only when what separates them is punctuation, ``$``, spacing commands
    or "and"/"or"; any other text means the earlier box was an intermediate result.
    """
    found = boxes(text)
    if not found:
        return []
    group = [found[-1]]
    for box in reversed(found[:-1]):
        gap = text[box[1] : group[-1][0]]
        if len(gap) > _GAP_CAP or not _BOX_GAP_RE.fullmatch(gap):
            break
        group.append(box)
    contents: list[str] = []
    for _, _, content in reversed(group):
        content = content.strip()
        if content and content not in contents:
            contents.append(content)
    return contents


# ----------------------------------------------------------------------------------------------
# Sentences after an anchor


_FINAL_RE = re.compile(r"final\s+answer\s*(?:is\b|[:：])\s*[:：]?", re.IGNORECASE)
# "Answer:" in the languages graders meet most (lighteval's multilingual anchors), and "A:".
_ANSWER_WORDS = (
    r"(?:final\s+)?answer|A|réponse(?:\s+finale)?|respuesta(?:\s+final)?|resposta(?:\s+final)?|antwort|risposta"
    r"|ответ|答案|最终答案|解答|정답|उत्तर|الإجابة|الجواب|jawaban"
)
_ANSWER_LINE_RE = re.compile(
    r"^[ \t>*#_-]*(?:\*\*)?(?:" + _ANSWER_WORDS + r")(?:\*\*)?[ \t]*[:：]", re.MULTILINE | re.IGNORECASE
)
_LOWER_A_RE = re.compile(r"(?:\*\*)?a(?:\*\*)?\s*[:：]")
_HOPE = "i hope it is correct"
_PROSE_RE = re.compile(r"[A-Za-z][a-z]+\s")  # "The largest $n$ is 34": a sentence, not an answer
_COPULA_RE = re.compile(r"\s(?:is|are|equals|was|will be|would be)\s*:?\s+")


def sentence(text: str) -> str:
    """The first sentence of ``text``: up to a newline or a ``.``/``!``/``?``/``;`` followed by a
    space, outside ``$...$``, ``\\(...\\)``, ``\\[...\\]`` and braces; a decimal point never ends it."""
    text = text[:ANSWER_CAP]
    lowered = text.lower()
    hope = lowered.find(_HOPE)
    if hope >= 0:
        text = text[:hope]
    depth = 0
    dollars = 0  # 1 inside $...$, 2 inside $$...$$
    bracket = ""  # inside \( \) or \[ \]: the closing token
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if not dollars and not bracket and nxt in "([":
                bracket = "\\)" if nxt == "(" else "\\]"
            elif bracket and text.startswith(bracket, i):
                bracket = ""
            i += 2
            continue
        if ch == "$":
            if text.startswith("$$", i):
                dollars = 0 if dollars == 2 else 2 if not dollars else dollars
                i += 2
                continue
            dollars = 0 if dollars == 1 else 1 if not dollars else dollars
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == "\n" and dollars != 2 and bracket != "\\]":
            return text[:i]
        elif not dollars and not bracket and depth == 0 and ch in ".!?;":
            if i + 1 >= n or text[i + 1].isspace():
                return text[:i]
        elif ch in "。！？" and not dollars and not bracket:
            return text[:i]
        i += 1
    return text


def _unwrap_math(s: str) -> str:
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            inner = s[len(left) : len(s) - len(right)]
            if left != "$" or "$" not in inner:
                return inner.strip()
    return s


def clean_answer(answer: str) -> str:
    """An anchored answer without emphasis, quotes, trailing full stop and outer math delimiters."""
    s = answer.strip()
    if s.lower().endswith(_HOPE):
        s = s[: -len(_HOPE)].rstrip()
    s = s.strip().strip("*").strip().strip("\"'“”").strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    s = _unwrap_math(s)
    return s.rstrip(".").strip()


def _leading_math(s: str) -> str:
    """``$(2, 3)$, found by substitution`` -> ``$(2, 3)$``: one math span followed only by prose."""
    if not s.startswith("$") or s.startswith("$$"):
        return s
    close = s.find("$", 1)
    if close < 0 or "$" in s[close + 1 :]:
        return s
    rest = s[close + 1 :].lstrip()
    if rest.lower().startswith(("percent", "pct")):
        return s
    if rest[:1] in (",", ";", ":") or rest[:1].isalpha():
        return s[: close + 1]
    return s


def _after_copula(s: str) -> str:
    """``The largest $n$ is 34`` -> ``34``: the value a prose sentence states (outside math)."""
    if not _PROSE_RE.match(s):
        return s
    last = None
    for m in _COPULA_RE.finditer(s):
        if s.count("$", 0, m.start()) % 2 == 0:
            last = m
    return s[last.end() :] if last is not None else s


def final_answer(text: str) -> str | None:
    """The answer of the last "final answer is ..." / "Final Answer: ..." sentence."""
    last = None
    for match in _FINAL_RE.finditer(text):
        last = match
    if last is None:
        return None
    tail = text[last.end() : last.end() + ANSWER_CAP].lstrip().lstrip("*").lstrip()  # "**Final Answer:**\n$$5$$"
    cand = clean_answer(_leading_math(_after_copula(clean_answer(sentence(tail)))))
    return cand or None


def answer_line(text: str) -> str | None:
    """The answer of the last ``Answer: ...`` / ``**Answer:** ...`` / ``A: ...`` line."""
    for m in reversed(list(_ANSWER_LINE_RE.finditer(text))):
        # "A:" only counts in upper case (a lower-case "a:" is prose), "Answer:" in any case.
        if _LOWER_A_RE.match(m.group(0).lstrip(" \t>*#_-")):
            continue
        rest = text[m.end() : m.end() + ANSWER_CAP].lstrip().lstrip("*").lstrip()
        cand = clean_answer(_leading_math(clean_answer(sentence(rest))))
        if cand:
            return cand
    return None


# ----------------------------------------------------------------------------------------------
# Fallbacks

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# Bounded lengths inside \\( \\) and \\[ \\]: an unclosed opener costs at most 500 steps, not the region.
_MATH_RE = re.compile(
    r"\$\$([^$]+)\$\$|\$([^$]+)\$|\\\(((?:[^\\]|\\(?!\))){1,500}?)\\\)|\\\[((?:[^\\]|\\(?!\])){1,500}?)\\\]"
)
_WHOLE_CAP = 120
_MATH_CAP = 2_000


def _fallback(name: str, text: str) -> str | None:
    if name == "last-number":
        nums = _NUMBER_RE.findall(text)
        return nums[-1].rstrip(",") if nums else None
    if name == "last-math":
        maths = _MATH_RE.findall(text[-_MATH_CAP:])
        if not maths:
            return None
        return next((g for g in maths[-1] if g), "").strip() or None
    nonempty = [ln for ln in text.splitlines() if ln.strip()]
    return (clean_answer(nonempty[-1]) or None) if nonempty else None


_WORD_RE = re.compile(r"(?<![\\a-zA-Z])(?:[^\W\d_]{3,}|[^\x00-\x7f\W\d_]{2,})")
_NOT_WORDS = frozenset({"and", "or", "pi", "sqrt", "frac", "infty", "cdot", "times", "mod", "pmod"})
_LEADING_NUMBER_RE = re.compile(r"[-+]?\$?\s*[\d.,]*\d")


def is_prose(answer: str) -> bool:
    """Whether an anchored answer is a sentence rather than a formula (``12 apples``, ``Janeth pays 220``):
    such answers are read by math-verify's extraction (from the anchor on), not parsed whole."""
    words = [w for w in _WORD_RE.findall(answer) if w.lower() not in _NOT_WORDS]
    if len(words) >= 2:
        return True
    return len(words) == 1 and bool(_LEADING_NUMBER_RE.match(answer)) and "\\" not in answer


def whole_answer(text: str) -> str | None:
    """The whole region when it is short and on one line (a response that is only the answer)."""
    s = text.strip()
    if not s or len(s) > _WHOLE_CAP or "\n" in s:
        return None
    return clean_answer(s) or None


def extract_answer(text: str, fallbacks: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """(answer, method) from the anchored rules and fallbacks; ``(None, "")`` when none applies.

    Several boxes that form one answer come back as a bare list ``a, b`` (method ``boxed-list``).
    """
    group = boxed_group(text)
    if len(group) == 1:
        return group[0], "boxed"
    if group:
        return ", ".join(group), "boxed-list"
    cand = final_answer(text)
    if cand:
        return cand, "final-answer"
    cand = answer_line(text)
    if cand:
        return cand, "answer-line"
    for name in fallbacks:
        cand = _fallback(name, text)
        if cand:
            return cand, f"fallback:{name}"
    return None, ""
