"""Difficulty levels from per-model pass rates: the three schemes ``still grade --levels`` offers.

Levels are integers, higher = harder, so ``still sample --difficulty-top``, ``--difficulty-weights
1=4,2=3,...`` and ``--stages --stage-by difficulty`` read them as they are. ``None`` means the
scheme gives the query no level (the reason is counted in the run summary).

* ``bands``: pass-rate bands of one model (``--level-model``; with several models and none named,
  the mean pass rate over all of them). ``edges`` are descending lower bounds: with the default
  (0.75, 0.5, 0.25, 0) level 1 is pass rate > 0.75, 2 is > 0.5, 3 is > 0.25, 4 is > 0 and 5 is
  never solved; with k = 4 samples each level is exactly one pass count. Equal-width bands are our
  choice (Phi-4-reasoning and DeepDistill select on pass-rate bands but publish no level edges).
* ``am``: the multi-model rules of AM's "Difficulty-Aware Staged RL" (arXiv 2504.00829, §2):
  models SMALL, MEDIUM (1.5B and 7B distills there) and an optional REFERENCE (R1). A query the
  reference never solves has no level (the paper drops it as too hard or unverifiable). L1: SMALL's
  pass rate in (0, 1). L2: SMALL never solves it and MEDIUM does at least once (the paper's
  "MEDIUM = 1" and "MEDIUM in (0, 1)" rules); the paper's third L2 rule (both in (0, 1)) is already
  L1 and stays 1 here (the lower level wins). L3: neither solves it (the paper then keeps every
  query a LARGE model fails and 50% / 10% of math / code ones it solves: a selection for
  ``still sample`` on ``grade.LARGE.pass_rate``). Level 0: SMALL always solves it (no paper level).
* ``adaptive``: ZMath's LLM-adaptive grading (arXiv 2504.11919): the student's own correct answers
  are easy (level 1: the student's pass rate >= ``easy_pass_rate``); the rest get levels 2..5 from
  ``bins`` over a solvability signal, the mean pass rate of the other models (teachers) when there
  are any, else the student's own mean score. ZMath grades the rest with a process reward model
  whose bins it does not publish; the equal-width bins (0.75, 0.5, 0.25) are our documented stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from still.core.errors import UsageError

SCHEMES = ("none", "bands", "am", "adaptive")
DEFAULT_BAND_EDGES: tuple[float, ...] = (0.75, 0.5, 0.25, 0.0)
DEFAULT_ADAPTIVE_BINS: tuple[float, ...] = (0.75, 0.5, 0.25)
DEFAULT_EASY_PASS_RATE = 0.5


@dataclass(frozen=True)
class ModelGrade:
    """One model's statistics over its responses to one query."""

    pass_rate: float
    mean_score: float
    cv: float | None
    n: int
    n_truncated: int

    def as_dict(self) -> dict[str, object]:
        return {
            "pass_rate": self.pass_rate,
            "mean_score": self.mean_score,
            "cv": self.cv,
            "n": self.n,
            "n_truncated": self.n_truncated,
        }


@dataclass(frozen=True)
class LevelConfig:
    scheme: str = "bands"
    level_model: str | None = None  # bands: whose pass rate; adaptive: the student
    band_edges: tuple[float, ...] = DEFAULT_BAND_EDGES
    am_models: tuple[str, ...] = ()  # SMALL, MEDIUM[, REFERENCE]
    easy_pass_rate: float = DEFAULT_EASY_PASS_RATE
    adaptive_bins: tuple[float, ...] = DEFAULT_ADAPTIVE_BINS

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise UsageError(f"--levels must be one of {', '.join(SCHEMES)}")
        for name, edges in (("--band-edges", self.band_edges), ("--adaptive-bins", self.adaptive_bins)):
            if not edges or list(edges) != sorted(edges, reverse=True) or len(set(edges)) != len(edges):
                raise UsageError(f"{name} must be strictly descending pass rates, e.g. 0.75,0.5,0.25")
        if self.scheme == "am" and len(self.am_models) not in (2, 3):
            raise UsageError("--levels am needs --am-models SMALL,MEDIUM[,REFERENCE] (e.g. 1.5b,7b,r1)")
        if self.scheme == "am" and len(set(self.am_models)) != len(self.am_models):
            raise UsageError("--am-models names a model twice")
        if not 0.0 <= self.easy_pass_rate <= 1.0:
            raise UsageError("--easy-pass-rate must lie in 0..1")


def parse_rates(text: str, option: str) -> tuple[float, ...]:
    """``0.75,0.5,0.25`` into floats."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated numbers, not {text!r}") from None


def _band(value: float, edges: Sequence[float], first: int) -> int:
    """``first`` for value > edges[0], ``first + 1`` for > edges[1], ...; past the last edge: the next."""
    for i, edge in enumerate(edges):
        if value > edge:
            return first + i
    return first + len(edges)


class Leveller:
    """Assigns a query its level from its per-model grades; counts why a query got none."""

    def __init__(self, config: LevelConfig) -> None:
        config.validate()
        self.config = config
        self.unlevelled: dict[str, int] = {}

    def _skip(self, reason: str) -> None:
        self.unlevelled[reason] = self.unlevelled.get(reason, 0) + 1

    def _model(self, grades: Mapping[str, ModelGrade], name: str) -> ModelGrade | None:
        g = grades.get(name)
        if g is None:
            self._skip(f"no responses of {name}")
        return g

    def level(self, grades: Mapping[str, ModelGrade]) -> int | None:
        scheme = self.config.scheme
        if scheme == "none" or not grades:
            return None
        if scheme == "bands":
            return self._bands(grades)
        if scheme == "am":
            return self._am(grades)
        return self._adaptive(grades)

    def _bands(self, grades: Mapping[str, ModelGrade]) -> int | None:
        name = self.config.level_model
        if name is None:
            rate = sum(g.pass_rate for g in grades.values()) / len(grades)
        else:
            g = self._model(grades, name)
            if g is None:
                return None
            rate = g.pass_rate
        return _band(rate, self.config.band_edges, 1)

    def _am(self, grades: Mapping[str, ModelGrade]) -> int | None:
        names = self.config.am_models
        picked = [self._model(grades, n) for n in names]
        if any(g is None for g in picked):
            return None
        small, medium = picked[0], picked[1]
        assert small is not None and medium is not None
        if len(picked) == 3:
            reference = picked[2]
            assert reference is not None
            if reference.pass_rate == 0:
                self._skip(f"{names[2]} never passed (AM drops these)")
                return None
        if small.pass_rate == 1:
            return 0
        if small.pass_rate > 0:
            return 1
        if medium.pass_rate > 0:
            return 2
        return 3

    def _adaptive(self, grades: Mapping[str, ModelGrade]) -> int | None:
        name = self.config.level_model
        if name is None:
            if len(grades) != 1:
                models = ", ".join(grades)
                raise UsageError(f"--levels adaptive: several models ({models}); name the student with --level-model")
            name = next(iter(grades))
        student = self._model(grades, name)
        if student is None:
            return None
        if student.pass_rate >= self.config.easy_pass_rate:
            return 1
        others = [g.pass_rate for m, g in grades.items() if m != name]
        signal = sum(others) / len(others) if others else student.mean_score
        return _band(signal, self.config.adaptive_bins, 2)
