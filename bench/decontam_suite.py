"""A planted contamination suite: measured recall and false positives for ``decontam``.

From benchmark items it makes, deterministically for a seed, training-style prompts of five kinds:
``verbatim`` copies; ``reformatted`` copies (whitespace, ``$`` and ``\\(\\)`` delimiters, ``\\dfrac``,
``\\left``/``\\right``, brace spacing, punctuation, case, zero-padded numbers); ``numbers``: every
number changed; ``embedded``: the question inside a longer prompt among other text; and ``clean``
templated maths problems written for this suite, never taken from a benchmark. Tests assert the
recall targets on it and ``bench/decontam.py`` reports it for ``still`` and a baseline.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

KINDS = ("verbatim", "reformatted", "numbers", "embedded", "clean")

_NUMBER = re.compile(r"\d+")
_INLINE_MATH = re.compile(r"\$([^$]+)\$")


@dataclass(frozen=True)
class Planted:
    """One suite prompt: its kind, the benchmark item it came from (None for clean), and text."""

    kind: str
    bench: str | None
    item: int | None
    text: str


def _reformat(text: str, rng: random.Random) -> str:
    """Change the presentation only: the same question written differently."""
    steps: list[Callable[[str], str]] = [
        lambda t: re.sub(r"\s+", lambda m: rng.choice(["  ", "\n", " \t ", " "]), t),
        lambda t: _INLINE_MATH.sub(lambda m: m.group(1), t),
        lambda t: _INLINE_MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", t),
        lambda t: t.replace("\\frac", "\\dfrac"),
        lambda t: t.replace("\\dfrac", "\\frac"),
        lambda t: re.sub(r"(?<!\\left)\(", r"\\left(", t).replace(")", "\\right)"),
        lambda t: t.replace("{", "{ ").replace("}", " }"),
        lambda t: re.sub(r"[,.;:!?](?=\s|$)", "", t),
        lambda t: re.sub(r"\?", ".", t).replace(", ", " , "),
        lambda t: t.lower(),
        lambda t: t.upper(),
        lambda t: t.replace("'", "\u2019").replace(" - ", " \u2212 "),
        lambda t: _NUMBER.sub(lambda m: "0" + m.group() if rng.random() < 0.5 else m.group(), t),
        lambda t: "$" + t + "$" if "$" not in t else t,
        lambda t: t.replace("\\le ", "\\leq ").replace("\\cdot", "\\times"),
    ]
    chosen = rng.sample(range(len(steps)), k=rng.randint(2, 5))
    for i in sorted(chosen):
        text = steps[i](text)
    return text


def _change_numbers(text: str, rng: random.Random) -> str:
    def repl(m: re.Match[str]) -> str:
        old = int(m.group())
        new = old
        while new == old:
            new = rng.randint(2, max(9, old * 3))
        return str(new)

    return _NUMBER.sub(repl, text)


_PREFIXES = (
    "Solve the following problem. Show your work and justify each step.\n\n",
    "You are a careful competition coach. Here is a problem a student sent me:\n",
    "Problem:\n",
    "Let's practise. {clean}\n\nNow a harder one: ",
    "Question from the homework set (unit 4).\n",
    "",
)
_SUFFIXES = (
    "\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "\nAnswer with a single number.",
    "\n\nAfterwards, explain which theorem you used and why it applies here. {clean}",
    "\n\nThink carefully; partial credit is given for a clear method.",
    "",
)

_NAMES = ("Priya", "Tomasz", "Amara", "Kenji", "Lucia", "Odhran", "Fatima", "Bongani", "Ines", "Yusuf")
_THINGS = ("marbles", "stickers", "seashells", "postcards", "pebbles", "buttons", "badges", "acorns")
_PLACES = ("the harbour", "the library", "the orchard", "the workshop", "the greenhouse", "the depot")
_TEMPLATES = (
    "{name} collects {thing}. On Monday {name} finds {a} {thing} at {place}, and on Tuesday twice that"
    " number minus {b}. How many {thing} does {name} have after both days?",
    "A rectangular garden bed measures {a} metres by {b} metres. A path {c} metres wide is laid along"
    " all four sides outside the bed. What is the area of the path in square metres?",
    "Let $f(x) = {a}x^2 - {b}x + {c}$. Compute $f({d}) - f(-{d})$.",
    "Solve for $y$: ${a}y + {b} = {c}y - {d}$.",
    "The ferry leaving {place} carries {a} passengers on each trip and makes {b} trips a day. If a"
    " ticket costs {c} pounds, how much money does the ferry take in one week?",
    "How many integers $n$ with $1 \\le n \\le {big}$ leave remainder {b} on division by {c}?",
    "A bag holds {a} red tiles and {b} blue tiles. {name} draws two tiles without replacement. What is"
    " the probability that both tiles are blue? Give the answer as a fraction in lowest terms.",
    "Simplify $\\dfrac{{{a}x^{{{b}}} y^{{{c}}}}}{{{d}x y}}$ for nonzero $x$ and $y$.",
    "{name} cycles from {place} at {a} km/h while a friend jogs behind at {b} km/h, starting {c} km"
    " back. After how many hours does the gap between them reach {big} km?",
    "The sum of three consecutive odd integers is {big}. What is the product of the smallest and the largest of them?",
    "Evaluate $\\sum_{{k=1}}^{{{a}}} ({b}k + {c})$.",
    "A cube of side {a} cm is painted and cut into unit cubes. How many unit cubes have paint on exactly {e} faces?",
    "In triangle $PQR$, $PQ = {a}$, $QR = {b}$ and angle $Q$ is a right angle. Find the length of the"
    " median drawn from $P$.",
    "{name} saves {a} coins in the first week of the term and {b} more coins each week than the week"
    " before. How many coins are saved over {c} weeks?",
    "Find the greatest common divisor of ${big}$ and ${d}{c}$, then the least common multiple of the same pair.",
    "A recipe for {a} pancakes uses {b} eggs. The café at {place} expects {big} guests who each eat"
    " {c} pancakes. How many eggs should be ordered?",
    "The polynomial $x^3 - {a}x^2 + {b}x - {c}$ has roots $r$, $s$ and $t$. Compute $r^2 + s^2 + t^2$.",
    "Points $A({a}, {b})$ and $B({c}, {d})$ lie on a line. Where does that line cross the $y$-axis?",
    "A tank fills through one pipe in {a} hours and drains through another in {b} hours. With both"
    " open from empty, how long until the tank is full?",
    "{name} arranges {big} {thing} into rows of {a}, with the leftover {thing} given to {place}. How"
    " many {thing} are given away?",
    "What is the units digit of ${a}^{{{big}}} + {b}^{{{c}}}$?",
    "A regular polygon has interior angles of {e}0 degrees each plus {a} degrees. Does such a polygon"
    " exist, and if so how many sides does it have?",
    "The mean of {a} test scores is {big}. When one score of {b} is removed, what is the mean of the remaining scores?",
    "Write ${a}.{b}{c}$ as a fraction and reduce it.",
)


def clean_problem(rng: random.Random) -> str:
    """A templated maths problem written for this suite (not from any benchmark)."""
    template = rng.choice(_TEMPLATES)
    values = {
        "name": rng.choice(_NAMES),
        "thing": rng.choice(_THINGS),
        "place": rng.choice(_PLACES),
        "a": rng.randint(2, 19),
        "b": rng.randint(2, 19),
        "c": rng.randint(2, 19),
        "d": rng.randint(2, 9),
        "e": rng.randint(1, 3),
        "big": rng.randint(100, 999),
    }
    return template.format(**values)


def planted_suite(
    items: Sequence[tuple[str, int, str]], seed: int = 0, clean: int = 2000, kinds: Sequence[str] = KINDS
) -> Iterator[Planted]:
    """Planted prompts for (benchmark name, item index, text) triples, plus ``clean`` clean ones.

    ``numbers`` variants are made only for items with a number in them.
    """
    rng = random.Random(seed)
    for bench, item, text in items:
        if "verbatim" in kinds:
            yield Planted("verbatim", bench, item, text)
        if "reformatted" in kinds:
            yield Planted("reformatted", bench, item, _reformat(text, rng))
        if "numbers" in kinds and _NUMBER.search(text):
            yield Planted("numbers", bench, item, _change_numbers(text, rng))
        if "embedded" in kinds:
            prefix = rng.choice(_PREFIXES).format(clean=clean_problem(rng))
            suffix = rng.choice(_SUFFIXES).format(clean=clean_problem(rng))
            yield Planted("embedded", bench, item, prefix + text + suffix)
    if "clean" in kinds:
        for _ in range(clean):
            parts = [clean_problem(rng) for _ in range(rng.randint(1, 3))]
            yield Planted("clean", None, None, rng.choice(_PREFIXES).format(clean="") + "\n\n".join(parts))
