"""``still score``: per-response perplexity under a reference model, length and repetition."""

from __future__ import annotations

from typing import Any

import click

from still.cli._common import StreamOptions, run_stream, stream_options


@click.command("score")
@click.option("-m", "--model", required=True, metavar="M", help="Reference causal LM (directory or hub id).")
@click.option(
    "--engine",
    type=click.Choice(["hf", "vllm"]),
    default="hf",
    show_default=True,
    help="transformers forward passes (CPU or GPU), or vLLM prompt log-probs.",
)
@click.option("--dtype", default="auto", show_default=True, help="auto: bfloat16 on a GPU, float32 on the CPU.")
@click.option("--device", default="auto", show_default=True, help="hf: cpu, cuda, cuda:N.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="hf: windows per forward pass."
)
@click.option(
    "--max-length",
    type=click.IntRange(min=2),
    default=4096,
    show_default=True,
    help="Tokens per window; longer query+response pairs are scored in overlapping windows.",
)
@click.option(
    "--ngram", type=click.IntRange(min=1), default=4, show_default=True, help="n of the repeated n-gram share."
)
@click.option(
    "--top-ngram",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="n of top_ngram_count, the most frequent n-gram's count (the 20-gram rule of 'Not All Correct Answers').",
)
@click.option("--kv-cache-mb", type=click.IntRange(min=1), default=None, help="vllm: KV cache size (needed on CPU).")
@click.option("--enforce-eager", is_flag=True, help="vllm: no CUDA graphs / compilation (starts faster).")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=None, help="vllm: GPUs per replica.")
@click.option("--template", type=click.Path(dir_okay=False), metavar="FILE.jinja", help="Chat template to use.")
@click.option("--key", default="score", show_default=True, help="Field the statistics are written under.")
@stream_options
def command(
    stream: StreamOptions,
    model: str,
    engine: str,
    dtype: str,
    device: str,
    batch_size: int,
    max_length: int,
    ngram: int,
    top_ngram: int,
    kv_cache_mb: int | None,
    enforce_eager: bool,
    tensor_parallel_size: int | None,
    template: str | None,
    key: str,
) -> None:
    """Per-response statistics from a reference model, under one key.

    Each record gets score: {model, n_tokens, logprob_mean, ppl, chunks, n_words, rep_ngram_frac,
    rep_ngram_n, top_ngram_count, top_ngram_n, longest_repeat}: the mean log-probability and
    perplexity of the response given the chat-templated query (teacher forcing), its length in the
    model's tokens and in words, the share of repeated word n-grams, the count of the most frequent
    20-gram and the longest repeated word span. A separate command rather than a grade option: it
    annotates each response, while grade aggregates responses per query.
    See docs/score.md.

    \b
    Examples:
      still score -m Qwen/Qwen2.5-7B-Instruct --device cuda < sft.jsonl > scored.jsonl
      still score -m ./ref < sft.jsonl | still sample --where 'score.ppl<20' --where 'score.longest_repeat<50'
    """
    from still.core.score import ScoreConfig, score_records

    config = ScoreConfig(
        model=model,
        engine=engine,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        max_length=max_length,
        ngram=ngram,
        top_ngram=top_ngram,
        template=template,
        key=key,
        fields=stream.fields(),
        vllm_options=tuple(
            (name, value)
            for name, value in (
                ("kv_cache_memory_bytes", kv_cache_mb and kv_cache_mb * 1024 * 1024),
                ("enforce_eager", enforce_eager),
                ("tensor_parallel_size", tensor_parallel_size),
            )
            if value
        ),
    )
    config.validate()

    def summarise(stats: Any) -> None:
        info = stats.extra.get("score")
        if info and not stream.quiet:
            click.echo(
                f"still score: {info['scored']} responses, {info['tokens']} tokens scored, "
                f"{info['chunked']} in several windows, {info['empty_response']} empty",
                err=True,
            )

    run_stream("score", stream, lambda records, stats: score_records(records, config, stats), on_success=summarise)
