"""The engine options: one declaration (cli/_engine.py) behind generate, grade -m and verify --judge."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from conftest import run_still

from still.cli._engine import ENGINE_KEYS, EngineChoice


def _flags(command: click.Command) -> set[str]:
    return {flag for param in command.params for flag in getattr(param, "opts", [])}


def test_every_model_command_takes_the_same_engine_options() -> None:
    from still.cli.generate import command as generate
    from still.cli.grade import command as grade
    from still.cli.verify import command as verify

    names = ["--" + key.replace("_", "-") for key in ENGINE_KEYS]
    assert {"--engine", "--base-url", "--concurrency", "--top-k", "--stop", "--kv-cache-mb"} <= set(names)
    assert set(names) <= _flags(generate) and set(names) <= _flags(grade)
    assert {n.replace("--", "--judge-", 1) for n in names} <= _flags(verify)


def _choice(**changes: object) -> EngineChoice:
    from still.cli.generate import command

    ctx = command.make_context("generate", ["-m", "x"])
    values = {key: ctx.params[key] for key in ENGINE_KEYS}
    values.update(changes)
    return EngineChoice(**values)  # type: ignore[arg-type]


def test_options_reach_each_backend_under_its_own_names() -> None:
    vllm = _choice(engine="vllm", kv_cache_mb=512, enforce_eager=True, dtype="float32").open_options()
    assert vllm == {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 512 * 1024 * 1024}
    openai = _choice(engine="openai", base_url=("http://a/v1", "m2=http://b/v1"), request_timeout=5.0, retries=1)
    shared, per_model = openai.model_options(["m1", "m2"])
    assert shared == {"timeout_s": 5.0, "retries": 1, "base_urls": ["http://a/v1"]}
    assert per_model == {"m2": {"base_urls": ["http://a/v1", "http://b/v1"]}}
    params = _choice(top_k=5, stop=("###",), temperature=0.0).params()
    assert params.top_k == 5 and params.stop == ("###",) and params.greedy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("generate -m x --base-url http://a/v1", "--base-url is for --engine openai"),
        ("generate -m x --engine openai", "--engine openai needs --base-url URL"),
        ("generate -m x --engine openai --base-url y=http://a/v1", "'y' is not one of the models"),
        ("generate -m x --engine openai --base-url http://a/v1 --extra-body [1]", "must be a JSON object"),
        ("grade -m x --engine openai", "--engine openai needs --base-url URL"),
        ("verify --judge j --judge-engine openai", "--judge-engine openai needs --judge-base-url URL"),
        ("verify --judge-top-k 3", "--judge-top-k only apply with --judge MODEL"),
    ],
)
def test_engine_usage_errors(args: str, message: str, tmp_path: Path) -> None:
    empty = tmp_path / "q.jsonl"
    empty.write_text('{"id": "a", "query": "1 + 1?", "answer": "2", "response": "2"}\n')
    res = run_still(f"{args} {empty}", code=2)
    assert message in res.stderr and "Traceback" not in res.stderr
