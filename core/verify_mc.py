"""Multiple choice: anchored letter extraction only.

Common checkers upper-case the response and take the last standalone ``A``-``D``, so the article
"a" at the end of a sentence becomes choice A. Here a letter counts only when it is anchored:

- ``\\boxed{C}`` (also ``\\boxed{(C)}``, ``\\boxed{\\text{C}}``);
- "answer is C" / "answer: (C)" / "Answer: **C**" / "correct option is C" (the letter must stand
  alone: followed by the end, punctuation, a closing bracket or ``**``, never by more letters);
- a final line that is only the letter: ``C``, ``(C)``, ``C.``, ``**C**``, ``C) text of the choice``.

The last anchored letter after ``</think>`` wins; none found means ``no_answer``.
"""

from __future__ import annotations

import re
import string
from typing import Any

from still.core.verify_math import answer_region, last_boxed, make_verdict

LETTERS = string.ascii_uppercase

_AFTER = r"(?=\s*(?:$|[.,;:!?)\]*]|\s[-–—(]|\n))"
_ANCHOR_RE = re.compile(
    r"(?:answer\s*(?:is|would be|should be|=)?|(?:option|choice)\s*(?:is|would be|should be))"
    r"\s*[:：]?\s*(?:\*\*|\$)?\s*(?:\\text(?:bf)?\{)?\s*"
    # "(B) 12 apples": a bracketed letter may be followed by the choice's text; a bare one must stand alone.
    r"(?:[(\[](?P<bracketed>[A-Z])[)\]]|(?P<letter>[A-Z])\}?(?:\*\*|\$)?" + _AFTER + ")",
    re.IGNORECASE,
)
_LINE_RE = re.compile(r"^\s*(?:\*\*)?\s*[(\[]?(?P<letter>[A-Z])[)\]]?\s*(?:\*\*)?\s*(?:[.)]\s*.*)?$")
_BOXED_LETTER_RE = re.compile(r"^\s*(?:\\text(?:bf)?\{)?\s*[(\[]?\s*(?P<letter>[A-Za-z])\s*[)\]]?\s*\}?\s*$")


def gold_letter(answer: Any, choices: list[Any] | None) -> str | None:
    """The reference letter from an index (0-based int), a letter, ``(C)``, or a choice's text."""
    n = len(choices) if choices else 26
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return LETTERS[answer] if 0 <= answer < n else None
    if isinstance(answer, str):
        text = answer.strip()
        m = re.fullmatch(r"[(\[]?([A-Za-z])[)\]]?\.?", text)
        if m:
            letter = m.group(1).upper()
            return letter if LETTERS.index(letter) < n else None
        if choices:
            for i, choice in enumerate(choices):
                if isinstance(choice, str) and choice.strip() == text:
                    return LETTERS[i]
        # A digit string that is no choice's text is ambiguous (0- or 1-based): give an int or a letter.
    return None


def extract_letter(text: str, valid: str) -> tuple[str | None, str]:
    """The last anchored choice letter in ``text`` among ``valid``, with how it was found."""
    found: list[tuple[int, str, str]] = []  # (position, letter, method)
    boxed = last_boxed(text)
    if boxed is not None:
        m = _BOXED_LETTER_RE.match(boxed)
        if m and m.group("letter").upper() in valid:
            found.append((text.rfind(boxed), m.group("letter").upper(), "boxed"))
    for m in _ANCHOR_RE.finditer(text):
        group = "bracketed" if m.group("bracketed") else "letter"
        letter = m.group(group)
        # A lower-case letter only counts in brackets ("answer is (c)"): "the answer is a" is prose.
        if letter.islower() and group == "letter":
            continue
        if letter.upper() in valid:
            found.append((m.start(group), letter.upper(), "answer-phrase"))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        last = lines[-1]
        m = _LINE_RE.match(last)
        if m and m.group("letter") in valid:
            found.append((text.rfind(last), m.group("letter"), "final-line"))
    if not found:
        return None, ""
    _, letter, how = max(found, key=lambda f: f[0])
    return letter, how


def check_choice(response: str, answer: Any, choices: list[Any] | None, finish_reason: Any = None) -> dict[str, Any]:
    """Verdict for one multiple-choice record (``reason`` says why)."""
    gold = gold_letter(answer, choices)
    if gold is None:
        return make_verdict("error", None, "mc", f"reference answer {answer!r} is not a choice index or letter")
    region, why = answer_region(response, finish_reason)
    if region is None:
        return make_verdict("truncated", None, "think", why)
    n = len(choices) if choices else max(4, LETTERS.index(gold) + 1)
    letter, how = extract_letter(region, LETTERS[:n])
    if letter is None:
        return make_verdict("no_answer", None, "mc", "no anchored choice letter (Answer: X, \\boxed{X}, (X) alone)")
    if letter == gold:
        return make_verdict("correct", letter, f"mc/{how}", "same choice")
    return make_verdict("wrong", letter, f"mc/{how}", f"chose {letter}, reference {gold}")
