"""The matcher: benchmark items found in texts, with the method, score and span of each hit.

Texts go through the block screen (:mod:`still.core.decontam.screen`) in blocks; the few it
cannot clear take the per-record path here: anchored and whole items are added to the seed
candidates, and every candidate is scored by the methods (each can be switched off, and each hit
names its method):

* ``ngram``: the record shares at least one word n-gram found in this item only, n adapted to
  the item's length (n = L for items under 8 tokens, else min(13, max(8, L // 3)));
* ``containment``: the 1/df-weighted fraction of the item's 5-grams present in the record is at
  least a threshold (a question embedded in a longer prompt scores 1.0);
* ``digits``: the same fraction on number-masked tokens (runs of numbers collapse to one), for
  items long enough to be specific without their numbers (Light-R1 found MATH-500 items that
  differ from training data only in numbers).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from still.core.decontam.index import DecontamIndex
from still.core.decontam.normalise import FlatText, prepared
from still.core.decontam.screen import BlockScreen
from still.core.decontam.tables import METHODS, CompiledIndex, IndexParams, TokenIds, collapse_numbers, gram_hashes

RECENT_TEXTS = 4096  # results remembered by text (queries repeat once per response)


@dataclass
class Hit:
    """One benchmark item found in one field of a record."""

    bench: int
    item: int
    method: str
    score: float
    span: tuple[int, int]
    field: str

    def as_dict(self, index: DecontamIndex) -> dict[str, Any]:
        return {
            "benchmark": index.benchmarks[self.bench]["name"],
            "item": index.item_ids[self.item],
            "method": self.method,
            "score": round(self.score, 4),
            "span": list(self.span),
            "field": self.field,
        }


class Matcher:
    """Compiled tables for one index and one set of parameters; ``match(text)`` finds hits."""

    def __init__(self, index: DecontamIndex, params: IndexParams) -> None:
        self.compiled = CompiledIndex(index, params)
        self.index = index
        self.params = params
        self.methods = frozenset(params.methods)
        self.token_h = index.vocab_hashes
        self.tokens = TokenIds(index, self.compiled.anchors)
        self._item_cache: dict[tuple[str, int], tuple[dict[int, float], float]] = {}
        # oldest first; an OrderedDict drops its oldest in O(1) (a dict's next(iter()) scans the
        # holes its deletions leave at the front: ~2 us a record at RECENT_TEXTS)
        self._recent: OrderedDict[tuple[str, str], list[Hit]] = OrderedDict()
        self._screen: BlockScreen | None = None  # built on first use (or by prepare_screen)

    def prepare_screen(self) -> BlockScreen:
        """Build the block screen's tables now (else the first block builds them): part of
        loading an index, ~0.05 s for 10k items."""
        if self._screen is None:
            self._screen = BlockScreen(self.compiled, self.tokens)
        return self._screen

    # -- per record ---------------------------------------------------------------------------

    def candidates(
        self, raws: list[bytes], masked: list[int], seed_items: list[int]
    ) -> tuple[list[int], list[int] | None]:
        """Items worth scoring (and the exact ids when they were needed to find them).

        ``seed_items``: the items the record's seeds make candidates (found by the block screen).
        Anchored items are probed by their exact 5-grams when their rarest token occurs, and
        whole items when they are the whole text.
        """
        compiled = self.compiled
        tokens = self.tokens
        found: set[int] = set(seed_items)
        exact: list[int] | None = None
        if tokens.anchor_raw and not tokens.anchor_raw.isdisjoint(raws):
            # Probe only when every token of an anchored item occurs somewhere in the record
            # (numbers compared masked first: cheap, and most records stop here).
            present = set(masked)
            items_of = compiled.anchor_items
            ready = {
                i
                for raw in tokens.anchor_raw.intersection(raws)
                for i in items_of[tokens.exact[raw]]
                if compiled.anchor_masked[i] <= present
            }
            if ready:
                exact = tokens.exact_ids(raws)
                present_exact = set(exact)
                ready = {i for i in ready if compiled.anchor_sets[i] <= present_exact}
            if ready and exact is not None:
                exact_counts: Counter[int] = Counter()
                table, keys = compiled.exact_table, compiled.exact_keys
                for n in compiled.exact_sizes:
                    probe = set(zip(*(exact[k:] for k in range(n)), strict=False))
                    exact_counts.update(chain.from_iterable(map(table.__getitem__, probe & keys)))
                found.update(i for i, c in exact_counts.items() if i in ready and c >= compiled.exact_need[i])
        if compiled.whole and len(masked) <= compiled.whole_max:
            exact = tokens.exact_ids(raws)
            found.update(compiled.whole.get(tuple(exact), ()))
        return sorted(found), exact

    def match(self, text: str, field_name: str = "query") -> list[Hit]:
        """Benchmark items found in ``text`` (:meth:`match_many` of one text)."""
        return self.match_many([(text, field_name)])[0]

    def _match_uncached(self, text: str, field_name: str, seed_items: list[int]) -> list[Hit]:
        """Hits in one text the screen could not clear, given its seed candidates."""
        raws = prepared(text).split()
        masked = self.tokens.masked_ids(raws)
        cands, exact = self.candidates(raws, masked, seed_items)
        if not cands:
            return []
        exact = exact if exact is not None else self.tokens.exact_ids(raws)
        return self._score(text, exact, masked, cands, field_name)

    # -- blocks of records ----------------------------------------------------------------------

    def match_many(self, texts: Sequence[tuple[str, str]]) -> list[list[Hit]]:
        """Benchmark items found in each (text, field name) pair, in order.

        The texts are screened in blocks with numpy; only those the screen cannot clear, a few in
        a hundred in practice, take the per-record path. Distillation data repeats each query
        once per response, so the last few thousand results are remembered by text.
        """
        recent = self._recent
        remembered = [recent.get(key) for key in texts]
        keys = list(dict.fromkeys([key for key, hits in zip(texts, remembered, strict=True) if hits is None]))
        if not keys:
            return [hits for hits in remembered if hits is not None]  # all of them
        suspects, seeds = self.prepare_screen().screen([text for text, _ in keys])
        found: dict[tuple[str, str], list[Hit]] = {}
        evict = recent.popitem
        for key, suspect, seed_items in zip(keys, suspects, seeds, strict=True):
            hits = found[key] = self._match_uncached(*key, seed_items) if suspect else []
            if len(recent) >= RECENT_TEXTS:
                evict(last=False)
            recent[key] = hits
        return [found[key] if hits is None else hits for key, hits in zip(texts, remembered, strict=True)]

    def screen(self, texts: Sequence[str]) -> list[bool]:
        """For each text, False when it certainly contains no benchmark item (the per-record
        path would find no candidate), True when it may (it then needs :meth:`match`)."""
        return self.prepare_screen().screen(texts)[0]

    def _item_grams(self, method: str, i: int) -> tuple[dict[int, float], float]:
        """An item's grams with their weights, and the weights' total (cached: items recur)."""
        key = (method, i)
        got = self._item_cache.get(key)
        if got is None:
            grams, weights = self.compiled.grams[method].item(i)
            got = self._item_cache[key] = (
                dict(zip(grams.tolist(), weights.tolist(), strict=True)),
                float(weights.sum()),
            )
        return got

    def _score(self, text: str, exact: list[int], masked: list[int], cands: list[int], field_name: str) -> list[Hit]:
        th = self.token_h
        sequences = {"exact": th[np.array(exact, dtype=np.int64)]}
        positions = np.empty(0, dtype=np.int64)
        record_grams: dict[tuple[str, int], tuple[list[int], set[int]]] = {}
        hits: list[Hit] = []
        token_spans: tuple[FlatText, list[tuple[int, int]]] | None = None
        for i in cands:
            best: tuple[float, str, set[int], list[int], int] | None = None
            for method in METHODS:
                if method not in self.methods:
                    continue
                n = int(self.compiled.grams[method].n[i])
                if n <= 0:
                    continue
                weights, total = self._item_grams(method, i)
                if total <= 0.0:
                    continue
                kind = "digits" if method == "digits" else "exact"
                rec = record_grams.get((kind, n))
                if kind not in sequences:
                    collapsed, positions = collapse_numbers(masked)
                    sequences[kind] = th[collapsed]
                if rec is None:
                    listed = gram_hashes(sequences[kind], n).tolist()
                    rec = record_grams[(kind, n)] = (listed, set(listed))
                found = rec[1].intersection(weights)
                found_w = list(map(weights.__getitem__, found))
                score = sum(found_w) / total
                if method == "ngram":  # an n-gram of this item only (df 1), not shared boilerplate
                    fired = max(found_w, default=0.0) >= 1.0
                elif method == "containment":
                    fired = score >= self.params.containment - 1e-9
                else:
                    fired = score >= self.params.digits - 1e-9
                if fired and (best is None or score > best[0] + 1e-9):
                    best = (score, method, {g for g, w in zip(found, found_w, strict=True) if w > 0}, rec[0], n)
                    if score >= 1.0 - 1e-9:  # nothing scores higher
                        break
            if best is None:
                continue
            score, method, matched, rec_list, n = best
            where = [k for k, g in enumerate(rec_list) if g in matched]
            first, last = where[0], where[-1] + n - 1
            if method == "digits":
                first = int(positions[first])
                last = int(positions[last + 1]) - 1 if last + 1 < positions.size else len(exact) - 1
            if token_spans is None:
                flat = FlatText(text)  # the kept tokens' [start, end), and the map back to ``text``
                token_spans = flat, flat.word_spans()
            flat, spans = token_spans
            span = (
                (flat.original(spans[first][0], False), flat.original(spans[last][1], True))
                if last < len(spans)
                else (0, len(text))
            )
            hits.append(Hit(int(self.index.item_bench[i]), i, method, score, span, field_name))
        return hits
