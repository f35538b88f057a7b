"""``still score --engine vllm`` for real on CPU (``make test-vllm``), against the hf engine.

Skipped where vllm is not installed (the normal ``make test``). Both engines in float32 on the
tiny model; the documented tolerance (docs/score.md) is checked on every record (in one window
and in several) and on every token.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from conftest import run_still

pytest.importorskip("vllm", reason="the vllm engine tests run in .venv-vllm: make test-vllm")

# docs/score.md: in float32 the engines' log-probabilities differ by at most 1e-4 nats, per token
# and in the mean (measured: 5e-7 on the tiny model); everything else is equal
TOLERANCE = 1e-4

RECORDS = [
    {"id": "a", "query": "What is 2 + 3?", "response": "<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}."},
    {"id": "b", "query": "Sort the list", "response": "def f(x):\n    return sorted(x)\nprint(f([3, 1]))"},
    {"id": "c", "query": "Find the sum of 12 and 30, please reason step by step", "response": "42"},
    {"id": "d", "query": "x", "response": "the the the the the the the the " * 6},
    {"id": "e", "query": "Nothing to say", "response": ""},
    {"id": "f", "query": "x", "response": "42"},
]


def _score(engine: str, tiny_model: Path, src: Path, max_length: int) -> list[dict]:
    args = f"score -m {tiny_model} --engine {engine} --dtype float32 --max-length {max_length}"
    if engine == "vllm":
        args += " --kv-cache-mb 256 --enforce-eager"
    return [json.loads(line) for line in run_still(f"{args} {src}", timeout=600).lines()]


def test_vllm_score_agrees_with_hf(tiny_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    hf = _score("hf", tiny_model, src, 24)
    vllm = _score("vllm", tiny_model, src, 24)
    assert [r["id"] for r in vllm] == [r["id"] for r in RECORDS] == [r["id"] for r in hf]
    # some records are scored in one window, some in several
    assert {r["score"]["chunks"] > 1 for r in vllm if r["score"]["n_tokens"]} == {True, False}
    for a, b in zip(hf, vllm):
        sa, sb = a["score"], b["score"]
        exact = {k: v for k, v in sa.items() if k not in ("logprob_mean", "ppl")}
        assert exact == {k: v for k, v in sb.items() if k not in ("logprob_mean", "ppl")}
        if sa["logprob_mean"] is None:
            assert sb["logprob_mean"] is None and sb["ppl"] is None
            continue
        assert abs(sa["logprob_mean"] - sb["logprob_mean"]) <= TOLERANCE
        assert sb["ppl"] == pytest.approx(sa["ppl"], rel=TOLERANCE * 1.01)


def test_vllm_token_logprobs_agree_with_hf(tiny_model: Path) -> None:
    from still.core.score import HFScorer, VLLMScorer, windows

    vllm = VLLMScorer(
        str(tiny_model),
        dtype="float32",
        max_length=64,
        template=None,
        kv_cache_memory_bytes=256 << 20,
        enforce_eager=True,
    )
    try:
        tok = vllm.tokenizer
        sequences = [tok(r["query"] + " " + r["response"], add_special_tokens=False)["input_ids"] for r in RECORDS[:4]]
        wins = [w for i, seq in enumerate(sequences) for w in windows(i, len(seq), 1, 64)]
        got = vllm.target_logprobs(sequences, wins)
    finally:
        vllm.close()
    hf = HFScorer(str(tiny_model), dtype="float32", device="cpu", batch_size=2, max_length=64, template=None)
    want = hf.target_logprobs(sequences, wins)
    assert [len(x) for x in got] == [len(x) for x in want] == [w.end - w.first for w in wins]
    worst = max(abs(g - w) for gs, ws in zip(got, want) for g, w in zip(gs, ws))
    print(f"largest per-token difference vllm - hf: {worst:.2e}")
    assert worst <= TOLERANCE, worst
