"""``still generate``: k responses per query from one or more models (hf, vllm or openai engines)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from still.cli._common import StreamOptions, finish, stream_options

R1 = "Please reason step by step, and put your final answer within \\boxed{}."


def _count_lines(paths: tuple[str, ...]) -> int | None:
    """Input lines when every input is a plain regular file (for the ETA); None otherwise."""
    total = 0
    for path in paths:
        if path == "-" or not os.path.isfile(path):
            return None
        with open(path, "rb") as src:
            if src.read(2) == b"\x1f\x8b":
                return None
            src.seek(0)
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: src.read(1 << 20), b""))
    return total


def _engine_options(engine: str, opts: dict[str, Any]) -> dict[str, Any]:
    keys: tuple[str, ...]
    if engine == "hf":
        keys = ("dtype", "device", "batch_size", "template")
    elif engine == "vllm":
        keys = (
            "dtype",
            "template",
            "tensor_parallel_size",
            "data_parallel_size",
            "enforce_eager",
            "kv_cache_memory_bytes",
        )
    else:
        keys = ("base_urls", "api_key_env", "concurrency", "timeout_s", "retries", "template", "extra_body")
    return {k: opts[k] for k in keys if opts.get(k) not in (None, ())}


def _split_urls(values: tuple[str, ...], models: tuple[str, ...]) -> tuple[list[str], dict[str, list[str]]]:
    """Shared URLs, and URLs bound to one model (``MODEL=URL``)."""
    from still.core.errors import UsageError

    shared: list[str] = []
    bound: dict[str, list[str]] = {}
    for value in values:
        eq, scheme = value.find("="), value.find("://")
        if 0 < eq < scheme:
            model, url = value[:eq], value[eq + 1 :]
            if model not in models:
                raise UsageError(f"--base-url {value}: {model!r} is not one of the --model values")
            bound.setdefault(model, []).append(url)
        else:
            shared.append(value)
    for model in models:
        if not shared and model not in bound:
            raise UsageError(f"--model {model} has no server: add --base-url URL or --base-url {model}=URL")
    return shared, bound


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    import json

    from still.core.errors import UsageError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option}: not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object")
    return value


def _verify_config(stream: StreamOptions, opts: dict[str, Any]) -> Any:
    from still.core.verify import VerifyConfig

    return VerifyConfig(fields=stream.fields(), answer_field=opts["answer_field"])


@click.command("generate")
@click.option(
    "-m", "--model", "models", multiple=True, required=True, metavar="M", help="Model (repeatable: several teachers)."
)
@click.option("--engine", type=click.Choice(["hf", "vllm", "openai"]), default="hf", show_default=True, help="Backend.")
@click.option("-k", "--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Responses per query.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=32768, show_default=True, help="New tokens at most.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.6, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=click.FloatRange(min=0, min_open=True, max=1), default=0.95, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample only from the k likeliest tokens.")
@click.option("--stop", multiple=True, metavar="TEXT", help="End a response before TEXT (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Global seed; each sample's seed derives from it.")
@click.option("--instruction", default=R1, show_default="the R1 instruction", help="Appended to the user turn.")
@click.option("--no-instruction", is_flag=True, help="Send the query as it is.")
@click.option("--system", metavar="TEXT", help="A system prompt (R1 recommends none).")
@click.option("--think-prefill", is_flag=True, help="Start every response with '<think>\\n' (R1 usage advice).")
@click.option("--no-thinking", is_flag=True, help="NoThinking: prefill a closed thinking block, answer directly.")
@click.option("--prefill", metavar="TEXT", help="Start every response with TEXT (any prefill; the response keeps it).")
@click.option("--template", type=click.Path(dir_okay=False), metavar="FILE.jinja", help="Chat template to use.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="hf: rows per batch.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default=None, help="hf/vllm.")
@click.option("--device", default=None, metavar="DEV", help="hf: cpu, cuda, cuda:1 [default: GPU if any].")
@click.option(
    "--base-url",
    "base_urls",
    multiple=True,
    metavar="[MODEL=]URL",
    help="openai: a server, e.g. http://h:8000/v1 (repeatable); MODEL=URL serves only that --model.",
)
@click.option("--api-key-env", default=None, metavar="VAR", help="openai: env variable with the key [OPENAI_API_KEY].")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="openai: requests in flight per URL.")
@click.option("--request-timeout", "timeout_s", type=click.FloatRange(min=0.1), default=None, help="openai: seconds.")
@click.option(
    "--extra-body",
    metavar="JSON",
    help='openai: fields merged into every request, e.g. \'{"generation_config": "{\\"do_sample\\": true}"}\'.',
)
@click.option("--retries", type=click.IntRange(min=0), default=None, help="openai: retries per request.")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=None, help="vllm: GPUs per replica.")
@click.option("--data-parallel-size", type=click.IntRange(min=1), default=None, help="vllm: replicas.")
@click.option("--kv-cache-mb", type=click.IntRange(min=1), default=None, help="vllm: KV cache size (needed on CPU).")
@click.option("--enforce-eager", is_flag=True, default=None, help="vllm: no CUDA graphs / compilation (starts faster).")
@click.option(
    "--until-verified",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Sample each query until verify passes or N attempts are spent; every attempt is written with its verdict.",
)
@click.option("--answer-field", default="answer", show_default=True, metavar="PATH", help="For --until-verified.")
@click.option("--resume", is_flag=True, help="With -o FILE: continue the run journalled in FILE.journal.")
@click.option("--window", type=click.IntRange(min=1), default=64, show_default=True, help="Queries per engine call.")
@stream_options
def command(stream: StreamOptions, **opts: Any) -> int:
    """Generate -k responses per query from each --model, one output line per response.

    Each line keeps the input fields and adds response, model, sample_idx, finish_reason,
    n_tokens, prompt_tokens, seed and sampling. Defaults follow DeepSeek-R1 (T 0.6, top_p 0.95,
    32768 tokens, no system prompt, the instruction appended to the user turn). Each sample's
    seed comes from (--seed, id, sample_idx), so output is the same for any batch size, server
    count or resume. Lines come in input order, then --model order, then sample_idx.

    With -o FILE every response is journalled in FILE.journal as it finishes; after a crash
    or kill, the same command with --resume generates only what is missing. FILE appears
    when the run completes.

    \b
    Examples:
      still generate -m ./model -k 4 --max-tokens 4096 queries.jsonl > responses.jsonl
      still generate -m a -m b --engine openai --base-url http://h1:8000/v1 --base-url http://h2:8000/v1 q.jsonl
      still generate -m ./model --until-verified 8 -o out.jsonl --resume math.jsonl
    """
    from still.core.engines import SamplingParams
    from still.core.errors import UsageError
    from still.core.fields import shard_filter
    from still.core.generate import GenerateConfig, Progress, generate_records, journal_key
    from still.core.journal import Journal, journal_path
    from still.core.jsonl import AtomicOutput, read_records
    from still.core.prompts import PromptStyle
    from still.core.stats import RunStats

    engine = opts["engine"]
    if opts["kv_cache_mb"]:
        opts["kv_cache_memory_bytes"] = opts["kv_cache_mb"] * 1024 * 1024
    opts["extra_body"] = _json_object(opts["extra_body"], "--extra-body")
    if len(set(opts["models"])) != len(opts["models"]):
        raise UsageError("--model: each model once (use -k for more samples)")
    if opts["until_verified"] and opts["samples"] != 1:
        raise UsageError("--until-verified N replaces -k: give one of them")
    if opts["base_urls"] and engine != "openai":
        raise UsageError("--base-url is for --engine openai")
    if engine == "openai" and not opts["base_urls"]:
        raise UsageError("--engine openai needs --base-url URL (repeatable)")
    if sum(bool(opts[k]) for k in ("no_thinking", "think_prefill", "prefill")) > 1:
        raise UsageError("--no-thinking, --think-prefill and --prefill exclude each other")
    output = stream.output if stream.output not in (None, "-") else None
    journalled = output is not None and not (os.path.exists(output) and not os.path.isfile(output))
    if opts["resume"] and not journalled:
        raise UsageError("--resume needs -o FILE (a regular file): the journal lives next to it")

    model_options: dict[str, dict[str, Any]] = {}
    if engine == "openai":
        shared, bound = _split_urls(opts["base_urls"], opts["models"])
        opts["base_urls"] = tuple(shared)
        model_options = {model: {"base_urls": shared + urls} for model, urls in bound.items()}
    config = GenerateConfig(
        models=tuple(opts["models"]),
        engine=engine,
        engine_options=_engine_options(engine, opts),
        model_options=model_options,
        samples=opts["samples"],
        params=SamplingParams(
            temperature=opts["temperature"],
            top_p=opts["top_p"],
            max_tokens=opts["max_tokens"],
            top_k=opts["top_k"],
            stop=tuple(opts["stop"]),
        ),
        seed=opts["seed"],
        style=PromptStyle(
            instruction=None if opts["no_instruction"] else opts["instruction"],
            system=opts["system"],
            think_prefill=opts["think_prefill"],
            no_thinking=opts["no_thinking"],
            custom_prefill=opts["prefill"],
        ),
        fields=stream.fields(),
        until_verified=opts["until_verified"],
        verify=_verify_config(stream, opts) if opts["until_verified"] else None,
        window=opts["window"],
    )
    stats = RunStats("generate")
    if not stream.inputs and sys.stdin.isatty() and not stream.quiet:
        click.echo("still generate: reading JSONL from standard input (Ctrl-D ends it)", err=True)
    records = read_records(stream.inputs or ("-",), stats, stream.policy(), int(stream.max_line_mb * 1024 * 1024))
    records = shard_filter(records, stream.parsed_shard(), stream.fields(), stats)
    progress = None
    if sys.stderr.isatty() and not stream.quiet:
        progress = Progress(lambda text: click.echo(text, err=True, nl=False), _count_lines(stream.inputs))
    journal = None
    if journalled:
        assert output is not None
        fingerprint = {**config.fingerprint(), "shard": stream.shard}
        journal = Journal(journal_path(output), fingerprint, journal_key(config.fields), resume=opts["resume"])
    with AtomicOutput(stream.output) as sink:
        for line in generate_records(records, config, stats, journal, progress):
            sink.write(line)
    stats.check_balance()
    if journal is not None:
        journal.remove()
    finish(stats, stream)
    return 0
