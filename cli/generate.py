"""``still generate``: k responses per query from one or more models (hf, vllm or openai engines)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from still.cli._common import StreamOptions, finish, stream_options
from still.cli._engine import EngineChoice, engine_options, resume_option

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


def _verify_config(stream: StreamOptions, opts: dict[str, Any]) -> Any:
    from still.core.verify import VerifyConfig

    return VerifyConfig(fields=stream.fields(), answer_field=opts["answer_field"])


@click.command("generate")
@click.option(
    "-m", "--model", "models", multiple=True, required=True, metavar="M", help="Model (repeatable: several teachers)."
)
@click.option("-k", "--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Responses per query.")
@click.option("--seed", type=int, default=0, show_default=True, help="Global seed; each sample's seed derives from it.")
@click.option("--instruction", default=R1, show_default="the R1 instruction", help="Appended to the user turn.")
@click.option("--no-instruction", is_flag=True, help="Send the query as it is.")
@click.option("--system", metavar="TEXT", help="A system prompt (R1 recommends none).")
@click.option("--think-prefill", is_flag=True, help="Start every response with '<think>\\n' (R1 usage advice).")
@click.option("--no-thinking", is_flag=True, help="NoThinking: prefill a closed thinking block, answer directly.")
@click.option("--prefill", metavar="TEXT", help="Start every response with TEXT (any prefill; the response keeps it).")
@click.option(
    "--until-verified",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Sample each query until verify passes or N attempts are spent; every attempt is written with its verdict.",
)
@click.option("--answer-field", default="answer", show_default=True, metavar="PATH", help="For --until-verified.")
@resume_option
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Queries per engine call (openai: the next windows go out while one finishes).",
)
@engine_options(what="each --model")
@stream_options
def command(stream: StreamOptions, engine_choice: EngineChoice, **opts: Any) -> int:
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
    from still.core.errors import UsageError
    from still.core.fields import shard_filter
    from still.core.generate import GenerateConfig, Progress, generate_records, journal_key
    from still.core.journal import output_journal
    from still.core.jsonl import AtomicOutput, read_records
    from still.core.prompts import PromptStyle
    from still.core.stats import RunStats

    if len(set(opts["models"])) != len(opts["models"]):
        raise UsageError("--model: each model once (use -k for more samples)")
    if opts["until_verified"] and opts["samples"] != 1:
        raise UsageError("--until-verified N replaces -k: give one of them")
    if sum(bool(opts[k]) for k in ("no_thinking", "think_prefill", "prefill")) > 1:
        raise UsageError("--no-thinking, --think-prefill and --prefill exclude each other")
    engine_options, model_options = engine_choice.model_options(opts["models"])
    config = GenerateConfig(
        models=tuple(opts["models"]),
        engine=engine_choice.engine,
        engine_options=engine_options,
        model_options=model_options,
        samples=opts["samples"],
        params=engine_choice.params(),
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
    fingerprint = {**config.fingerprint(), "shard": stream.shard}
    journal = output_journal(stream.output, fingerprint, journal_key(config.fields), resume=opts["resume"])
    with AtomicOutput(stream.output) as sink:
        for line in generate_records(records, config, stats, journal, progress):
            sink.write(line)
    stats.check_balance()
    if journal is not None:
        journal.remove()
    finish(stats, stream)
    return 0
