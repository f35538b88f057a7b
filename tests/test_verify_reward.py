"""``still verify --reward-model``: scores equal a direct transformers forward pass; rule verdicts kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pytest
from conftest import run_still

RECORDS = [
    {"id": "m", "query": "What is 2 + 3?", "response": "The answer is \\boxed{5}.", "answer": "5"},
    {"id": "o1", "query": "Write a haiku about sums", "response": "<think>\nhmm\n</think>\nnumbers meet and add"},
    {"id": "w", "query": "What is 1 + 1?", "response": "\\boxed{3}", "answer": "2"},
    {"id": "o2", "query": "Explain carrying", "response": "When a digit column sums past nine, carry one to the next."},
    {"id": "o3", "query": "Say hi", "response": "hi"},
]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a one-output classification head on the tiny model's tokenizer."""
    pytest.importorskip("transformers")
    from tiny_model import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-reward"), seed=7)


def _direct_scores(model_dir: Path) -> dict[str, float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float64).eval()
    out = {}
    for rec in RECORDS:
        if "answer" in rec:
            continue
        final = rec["response"].split("</think>")[-1].strip()
        messages = [{"role": "user", "content": rec["query"]}, {"role": "assistant", "content": final}]
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logit = float(model(torch.tensor([ids])).logits[0, 0])
        out[rec["id"]] = 1 / (1 + math.exp(-logit))
    return out


def test_reward_scores_equal_direct_forward_pass(reward_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    direct = _direct_scores(reward_model)
    low = sorted(direct.values())
    threshold = round((low[0] + low[1]) / 2, 6)  # one below, two above: both verdicts
    assert low[1] - low[0] > 1e-3
    res = run_still(
        f"verify --reward-model {reward_model} --reward-batch-size 2 --reward-threshold {threshold} "
        f"--stats {tmp_path}/st.json {src}"
    )
    out = {d["id"]: d for d in map(orjson.loads, res.lines())}
    assert list(out) == [r["id"] for r in RECORDS]
    assert out["m"]["verify"]["verdict"] == "correct" and out["m"]["verify"]["method"] != f"reward/{reward_model}"
    assert out["w"]["verify"]["verdict"] == "wrong"
    for rid, want in direct.items():
        v = out[rid]["verify"]
        assert v["method"] == f"reward/{reward_model}"
        assert v["score"] == pytest.approx(want, rel=1e-5)
        assert v["verdict"] == ("correct" if want > threshold else "wrong")
    stats = json.loads((tmp_path / "st.json").read_text())
    assert stats["reward"]["scored"] == 3
    assert stats["verdicts"] == {"correct": 1 + 2, "wrong": 1 + 1}
    assert "reward model: scored 3, correct 2, wrong 1" in res.stderr


def test_reward_options_need_the_model_and_others_still_need_answers(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"query": "Say hi", "response": "hi"}\n')
    res = run_still(f"verify --reward-threshold 0.5 {src}", code=2)
    assert "--reward-model" in res.stderr
    run_still(f"verify {src}", code=3)  # without a reward model an 'other' record has no reference
