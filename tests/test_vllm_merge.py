"""A ``still merge`` output loads and generates in vLLM, greedily as transformers does (``make test-vllm``).

Skipped where vllm is not installed (the normal ``make test``). Two tiny float32 models with tied
embeddings (the merged directory has no lm_head: vLLM must tie it from the copied config) are merged
by the CLI; ``still generate`` then decodes greedily with the vllm and the hf engines, each in its
own process.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import run_still

pytest.importorskip("vllm", reason="the vllm engine tests run in .venv-vllm: make test-vllm")

QUERIES = ["What is 1 + 2?", "Sort 3 1 2", "Name a prime number", "Repeat: merge"]


def test_merged_model_generates_in_vllm_as_in_transformers(tmp_path: Path) -> None:
    from tiny_model import build_tiny_model

    a = build_tiny_model(tmp_path / "a", seed=1, tied=True)
    b = build_tiny_model(tmp_path / "b", seed=2, tied=True)
    merged = tmp_path / "merged"
    manifest = orjson.loads(run_still(f"merge -q --method linear --weight 2 --weight 1 {a} {b} -o {merged}").stdout)
    assert manifest["out"] == str(merged) and not (merged / "model.safetensors.index.json").exists()
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(b"".join(orjson.dumps({"id": str(i), "query": q}) + b"\n" for i, q in enumerate(QUERIES)))
    common = f"generate -m {merged} -k 1 --max-tokens 8 --temperature 0 --dtype float32"
    vllm = run_still(f"{common} --engine vllm --kv-cache-mb 512 --enforce-eager {queries}", timeout=600)
    hf = run_still(f"{common} --engine hf {queries}", timeout=600)
    by_engine = [{d["id"]: d for d in map(orjson.loads, r.lines())} for r in (vllm, hf)]
    assert sorted(by_engine[0]) == sorted(by_engine[1]) == [str(i) for i in range(len(QUERIES))]
    for qid, ours in by_engine[0].items():
        theirs = by_engine[1][qid]
        assert ours["n_tokens"] > 0, ours
        assert ours["response"] == theirs["response"], (qid, ours["response"], theirs["response"])
