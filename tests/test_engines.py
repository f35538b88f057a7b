"""The engine interface and the hf engine on the tiny model: seeds, sampling, batching, results."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from still.core.engines import GenerationRequest, SamplingParams, open_engine, request_seed
from still.core.errors import UsageError
from still.core.prompts import NOTHINKING_PREFILL, R1_INSTRUCTION, PromptStyle


def test_request_seed_depends_on_all_three_parts_and_nothing_else() -> None:
    seeds = {request_seed(g, q, i) for g in (0, 1) for q in ("a", "b") for i in (0, 1)}
    assert len(seeds) == 8
    assert request_seed(7, "q1", 3) == request_seed(7, "q1", 3)
    assert all(0 <= s < 2**31 for s in seeds)
    # no ambiguity between id and index ("a1", 0) vs ("a", 10)
    assert request_seed(0, "a1", 0) != request_seed(0, "a", 10)


def test_sampling_params_defaults_follow_r1_and_validate() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.max_tokens) == (0.6, 0.95, 32768)
    assert p.as_record() == {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}
    assert SamplingParams(stop=("x",), top_k=5).as_record()["stop"] == ["x"]
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"top_k": 0}):
        with pytest.raises(UsageError):
            SamplingParams(**bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        GenerationRequest()
    with pytest.raises(UsageError):
        GenerationRequest(prompt="x", prefill="<think>\n")


def test_prompt_style_r1_default_and_nothinking() -> None:
    msgs = PromptStyle().from_query("What is 2+2?")
    assert msgs == ({"role": "user", "content": "What is 2+2?\n" + R1_INSTRUCTION},)
    already = "Add 1 and 1. " + R1_INSTRUCTION
    assert PromptStyle().from_query(already)[0]["content"] == already  # not told twice
    assert PromptStyle().prefill == "" and PromptStyle(think_prefill=True).prefill == "<think>\n"
    assert PromptStyle(no_thinking=True).prefill == NOTHINKING_PREFILL
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "old answer"},
    ]
    out = PromptStyle(instruction=None).from_messages(chat)
    assert out == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    assert PromptStyle().from_messages([{"role": "assistant", "content": "x"}]) is None
    assert PromptStyle(system="S").from_query("q")[0] == {"role": "system", "content": "S"}


def test_unknown_engine_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown engine"):
        open_engine("nope", "m")


def test_row_sampler_matches_the_top_p_distribution() -> None:
    torch = pytest.importorskip("torch")
    from still.core.engines.hf import RowSampler

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    params = SamplingParams(temperature=0.7, top_p=0.8)
    # the reference: softmax(logits / T), keep the smallest top set reaching 0.8, renormalise
    probs = torch.softmax(logits / 0.7, dim=-1)
    keep, mass = [], 0.0
    for i in probs.argsort(descending=True).tolist():
        if mass >= 0.8:
            break
        keep.append(i)
        mass += float(probs[i])
    expected = {i: float(probs[i]) / mass for i in keep}
    n = 4000
    requests = [GenerationRequest(prompt="x", seed=s, params=params) for s in range(n)]
    chosen = RowSampler(requests)(None, logits.repeat(n, 1)).argmax(dim=-1).tolist()
    counts = Counter(chosen)
    assert set(counts) <= set(expected)
    for token, p in expected.items():
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[token] / n - p) < 5 * sd, (token, counts[token] / n, p)


def _requests(params: SamplingParams, k: int = 2) -> list[GenerationRequest]:
    style = PromptStyle()
    queries = [(f"q{i}", f"What is {i} + {i * 7}?" + " and" * i) for i in range(5)]
    return [
        GenerationRequest(
            messages=style.from_query(q), query_id=qid, sample_idx=s, seed=request_seed(3, qid, s), params=params
        )
        for qid, q in queries
        for s in range(k)
    ]


def test_hf_same_seed_same_samples_for_batch_sizes_1_and_8(tiny_model: Path) -> None:
    requests = _requests(SamplingParams(max_tokens=16))
    by_batch = {}
    for batch_size in (1, 8):
        with open_engine("hf", str(tiny_model), batch_size=batch_size, device="cpu") as engine:
            results = list(engine.generate(requests))
        assert sorted(id(r) for r, _ in results) == sorted(id(r) for r in requests)
        by_batch[batch_size] = {(r.query_id, r.sample_idx): res for r, res in results}
    assert {k: v.text for k, v in by_batch[1].items()} == {k: v.text for k, v in by_batch[8].items()}
    # different sample indices really differ (the seeds reach the sampler)
    assert by_batch[1][("q0", 0)].text != by_batch[1][("q0", 1)].text
    one = by_batch[8][("q1", 0)]
    assert one.finish_reason == "length" and one.completion_tokens == 16 and one.prompt_tokens > 5
    assert one.model == str(tiny_model) and one.seed == request_seed(3, "q1", 0) and one.latency_s > 0


def test_hf_greedy_equals_plain_transformers_greedy(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requests = _requests(SamplingParams(temperature=0, max_tokens=12), k=1)
    with open_engine("hf", str(tiny_model), batch_size=4) as engine:
        got = {r.query_id: res.text for r, res in engine.generate(requests)}
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    for r in requests:
        assert r.messages is not None
        text = tok.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        want = out[0, ids["input_ids"].shape[1] :].tolist()
        eos = tok.eos_token_id
        want = want[: want.index(eos)] if eos in want else want
        assert got[r.query_id] == tok.decode(want), r.query_id


def test_hf_stop_strings_prefill_and_template(tiny_model: Path, tmp_path: Path) -> None:
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:")
    base = SamplingParams(temperature=0, max_tokens=20)
    request = GenerationRequest(messages=({"role": "user", "content": "hi"},), prefill="<think>\n", params=base)
    with open_engine("hf", str(tiny_model), template=str(template)) as engine:
        ((_, full),) = engine.generate([request])
        assert full.prompt_tokens == len(engine.tokenizer("Q: hi\nA:<think>\n", add_special_tokens=False)["input_ids"])
        stop = full.text[3:6]
        cut_request = GenerationRequest(
            messages=request.messages,
            prefill="<think>\n",
            params=SamplingParams(temperature=0, max_tokens=20, stop=(stop,)),
        )
        ((_, cut),) = engine.generate([cut_request])
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens


def test_missing_model_directory_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory"):
        open_engine("hf", str(tmp_path / "nope"))


def test_offline_hub_id_not_in_cache_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from still.core.errors import StillError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(StillError) as err:
        open_engine("hf", "no-such-org/no-such-model")
    message = str(err.value)
    assert "\n" not in message and "offline" in message and "no-such-org/no-such-model" in message
