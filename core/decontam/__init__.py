"""Benchmark decontamination: find benchmark questions inside training records.

How it works (docs/decontam.md or README "still decontam" has the user-facing version), one
module per idea:

* :mod:`.normalise`: text to canonical tokens (case, LaTeX formatting, aliases, zero padding,
  Unicode), so formatting never matters.
* :mod:`.benchmarks`: benchmark files (JSONL, JSON, Parquet) and built-in names.
* :mod:`.index`: items as token-id sequences; tokens stored as unsalted 64-bit xxh3 hashes, in
  order: for size and speed, not confidentiality (a word list recovers most of the text).
* :mod:`.tables`: an index compiled for one parameter set: seed 5-grams (number-masked, no
  boilerplate) and what each item needs, anchored and whole items, 1/df-weighted gram tables.
* :mod:`.screen`: the block screen: a block of records at once with numpy, every 5-gram probed
  together; the clean majority leaves there, and it finds the seed candidates of the rest.
* :mod:`.matcher`: the per-record path for the few the screen cannot clear, scoring candidates
  with the ``ngram``, ``containment`` and ``digits`` methods.
* :mod:`.run`: the command's core (``run_decontam``) with its report.

**Boilerplate.** An n-gram found in more than ``max_df`` benchmark items, or lying inside a known
instruction phrase ("express your answer as a common fraction"), carries no weight and finds no
candidates, so "find the value of" alone matches nothing. Other n-grams weigh 1/df.
"""

from still.core.decontam.benchmarks import BUILTINS, Benchmark, load_benchmarks, parse_against
from still.core.decontam.index import DecontamIndex
from still.core.decontam.matcher import RECENT_TEXTS, Hit, Matcher
from still.core.decontam.normalise import canonical_tokens, prepared
from still.core.decontam.run import FIELD_CHOICES, RECORD_BLOCK, DecontamConfig, DecontamReport, run_decontam
from still.core.decontam.tables import METHODS, IndexParams, ngram_size

__all__ = [
    "BUILTINS",
    "FIELD_CHOICES",
    "METHODS",
    "RECENT_TEXTS",
    "RECORD_BLOCK",
    "Benchmark",
    "DecontamConfig",
    "DecontamIndex",
    "DecontamReport",
    "Hit",
    "IndexParams",
    "Matcher",
    "canonical_tokens",
    "load_benchmarks",
    "ngram_size",
    "parse_against",
    "prepared",
    "run_decontam",
]
