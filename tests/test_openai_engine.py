"""The openai engine against real ``transformers serve`` processes on loopback (two servers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import run_still

from still.core.engines import GenerationRequest, SamplingParams, open_engine, request_seed
from still.core.errors import StillError
from still.core.prompts import PromptStyle

pytest.importorskip("fastapi", reason="the openai engine tests need the 'serving' extra: pip install 'still[serving]'")

# transformers serve samples only when asked to (then it honours the seed)
SAMPLE = {"generation_config": '{"do_sample": true}'}


@pytest.fixture(scope="module")
def servers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[object]]:
    from serving import transformers_servers

    # the second server is not pinned: it loads whichever model a request names
    with transformers_servers([tiny_model, None], tmp_path_factory.mktemp("serve")) as running:
        yield running


def _requests(n: int, params: SamplingParams, prefill: str = "") -> list[GenerationRequest]:
    style = PromptStyle()
    return [
        GenerationRequest(
            messages=style.from_query(f"What is {i} + 1?"),
            prefill=prefill,
            query_id=f"q{i}",
            sample_idx=0,
            seed=request_seed(1, f"q{i}", 0),
            params=params,
        )
        for i in range(n)
    ]


@pytest.mark.slow
def test_same_seed_same_samples_for_one_and_two_servers(tiny_model: Path, servers: list, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(f'{{"id": "q{i}", "query": "What is {i} + 2?"}}\n' for i in range(4)))
    body = orjson.dumps(SAMPLE).decode()
    common = ["generate", "--engine", "openai", "-m", str(tiny_model), "-k", "2", "--max-tokens", "8"]
    # one request in flight per server: transformers serve batches concurrent requests under one
    # random stream, so only a server that keeps requests apart (vLLM) is seed-exact under load
    common += ["--extra-body", body, "--concurrency", "1", str(queries)]
    one = run_still([*common, "--base-url", servers[0].url])
    before = [s.requests_served() for s in servers]
    two = run_still([*common, "--base-url", servers[0].url, "--base-url", servers[1].url])
    after = [s.requests_served() for s in servers]
    assert one.stdout == two.stdout
    assert after[0] > before[0] and after[1] > before[1]  # both servers took part
    assert sum(after) - sum(before) == 8
    lines = [orjson.loads(x) for x in one.lines()]
    assert [(d["id"], d["sample_idx"]) for d in lines] == [(f"q{i}", s) for i in range(4) for s in range(2)]
    assert lines[0]["response"] != lines[1]["response"]  # seeds reach the server's sampler
    assert lines[0]["finish_reason"] == "length" and lines[0]["n_tokens"] == 8


def test_dead_server_is_avoided_and_bounded_concurrency(tiny_model: Path, servers: list) -> None:
    from serving import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    params = SamplingParams(max_tokens=4)
    requests = _requests(6, params)
    urls = [dead, servers[0].url, servers[1].url]
    with open_engine("openai", str(tiny_model), base_urls=urls, concurrency=2, backoff_s=0.05, extra_body=SAMPLE) as e:
        results = list(e.generate(requests))
        assert 1 < e.max_in_flight <= 6
    assert sorted(r.query_id for r, _ in results) == sorted(r.query_id for r in requests)
    assert all(res.completion_tokens == 4 and res.prompt_tokens > 0 for _, res in results)
    with open_engine("openai", str(tiny_model), base_urls=[dead], retries=2, backoff_s=0.01) as engine:
        with pytest.raises(StillError, match="q0#0 failed: .*Connection"):
            list(engine.generate(requests[:1]))


def test_prefill_renders_locally_and_uses_text_completions(tiny_model: Path, servers: list) -> None:
    from still.core.models import load_tokenizer, render_chat

    params = SamplingParams(temperature=0, max_tokens=5, stop=("zzz-never",))
    (request,) = _requests(1, params, prefill="<think>\n")
    with open_engine("openai", str(tiny_model), base_urls=[servers[1].url]) as engine:
        ((_, result),) = list(engine.generate([request]))
    tok = load_tokenizer(str(tiny_model))
    assert request.messages is not None
    prompt = render_chat(tok, request.messages, "<think>\n")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert result.prompt_tokens == len(tok(prompt)["input_ids"])
    assert result.finish_reason == "length" and result.text


def test_two_served_models_in_one_run_keep_the_line_order(
    tiny_model: Path, servers: list, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path_factory.mktemp("tiny-model-other"), seed=2, layers=1)
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "query": "1 + 1?"}\n{"id": "b", "query": "2 + 2?"}\n')
    models = [str(tiny_model), str(other)]
    args = ["generate", "--engine", "openai", "-m", models[0], "-m", models[1], "--max-tokens", "4", str(queries)]
    args += ["--extra-body", orjson.dumps(SAMPLE).decode()]
    # the first server is pinned to the tiny model: the other model may only go to the second
    urls = ["--base-url", f"{models[0]}={servers[0].url}", "--base-url", f"{models[1]}={servers[1].url}"]
    lines = [orjson.loads(x) for x in run_still(args + urls).lines()]
    assert [(d["id"], d["model"]) for d in lines] == [(q, m) for q in "ab" for m in models]
    assert all(d["n_tokens"] == 4 and d["finish_reason"] == "length" for d in lines)
    res = run_still([*args, "--base-url", f"{models[1]}={servers[1].url}"], code=2)
    assert "has no server" in res.stderr


def test_windows_overlap_and_a_journal_resumes_them(tiny_model: Path, servers: list, tmp_path: Path) -> None:
    """One query per window: the next windows' requests are in flight while one waits (more in
    flight than a window holds), lines keep the fixed order, and a run resumed from a journal
    holding some of the windows sends only the rest, in the same order."""
    from still.core.generate import GenerateConfig, Generator, journal_key
    from still.core.journal import Journal
    from still.core.jsonl import Record
    from still.core.stats import RunStats

    records = [Record({"id": f"q{i}", "query": f"What is {i} + 5?"}, None, "q.jsonl", i + 1) for i in range(6)]
    config = GenerateConfig(
        models=(str(tiny_model),),
        engine="openai",
        engine_options={"base_urls": [servers[0].url], "concurrency": 3, "extra_body": SAMPLE},
        params=SamplingParams(max_tokens=4),
        window=1,
    )

    def run(recs: list[Record], journal: Journal | None = None) -> tuple[list[bytes], int, int]:
        before = servers[0].requests_served()
        generator = Generator(config, RunStats("generate"), journal)
        try:
            lines = list(generator.run(recs))
            in_flight = generator.engines[str(tiny_model)].max_in_flight  # type: ignore[attr-defined]
        finally:
            generator.close()
        return lines, in_flight, servers[0].requests_served() - before

    fresh, in_flight, sent = run(records)
    assert [orjson.loads(x)["id"] for x in fresh] == [f"q{i}" for i in range(6)]
    assert sent == 6 and in_flight > 1  # a window holds one request: several in flight = overlap
    path = tmp_path / "out.jsonl.journal"
    fingerprint = config.fingerprint()
    first, _, _ = run(records[1:4], Journal(str(path), fingerprint, journal_key(config.fields), resume=False))
    resumed, _, sent = run(records, Journal(str(path), fingerprint, journal_key(config.fields), resume=True))
    assert sent == 3 and resumed[1:4] == first  # journalled lines reused as they are
    assert [orjson.loads(x)["id"] for x in resumed] == [f"q{i}" for i in range(6)]
