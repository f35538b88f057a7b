"""``still eval``: benchmark scores with honest statistics and full provenance.

``still eval score`` scores existing responses (any harness's) with the verify core and the same
statistics; ``still eval compare A B`` gives the paired difference of two runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from still.cli._common import StreamOptions, run_stream, stream_options
from still.cli._groups import DefaultGroup

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _report_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    decorators: list[_Decorator] = [
        click.option(
            "-k",
            "k",
            type=click.IntRange(min=1),
            help="Samples per problem that count [default: all a problem has; every problem must have as many].",
        ),
        click.option("--report", "report_path", metavar="FILE.md", help="Also write a Markdown table here."),
        click.option(
            "--plot",
            "plot_path",
            metavar="FILE.png",
            help="Also draw pass@k and answer lengths (extra 'plot': matplotlib).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap."),
        click.option(
            "--resamples", type=click.IntRange(min=100), default=10_000, show_default=True, help="Bootstrap resamples."
        ),
        click.option(
            "--clean-only",
            "clean_report",
            metavar="REPORT",
            help="Score only the problems a `still decontam --report` did not hit; says how many were left out.",
        ),
        click.option(
            "--bench",
            "benches",
            multiple=True,
            metavar="FILE|NAME",
            help="Benchmark(s) the responses answer: gold answers by problem id where a line has none; "
            "their checksums go into the fingerprint.",
        ),
        click.option(
            "--answer-field", default="answer", show_default=True, metavar="PATH", help="Gold answer on each line."
        ),
        click.option(
            "--benchmark-field",
            default="benchmark",
            show_default=True,
            metavar="PATH",
            help="Benchmark name on each line [default name: bench].",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Verify workers (output identical for any number).",
        ),
        click.option(
            "--sandbox",
            type=click.Choice(["auto", "bwrap", "unshare", "none"]),
            default="auto",
            show_default=True,
            help="Code isolation for code benchmarks.",
        ),
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


@click.group("eval", cls=DefaultGroup)
def command() -> None:
    """Benchmark scores with honest statistics: avg@k, pass@k, cons@k, intervals, provenance.

    `still eval --model M --bench B` runs `still eval run`: k samples per problem through an
    engine, verified and scored; `still eval score` scores existing responses; `still eval
    compare A B` tells whether two runs differ.

    Per-sample lines (each with verify) come first, then one summary line per benchmark and model:
    {eval: summary, benchmark, model, k, avg_at_k, pass_at_k, cons_at_k, ci95, sampling_se,
    truncation_rate, no_answer_rate, tokens, verdicts, splits, fingerprint}.
    """


@command.command("score")
@_report_options
@click.option(
    "--keep-verify",
    is_flag=True,
    help="Trust a verify result a line already has (default: verify again, the same rules for every harness).",
)
@stream_options
def score(
    stream: StreamOptions,
    k: int | None,
    report_path: str | None,
    plot_path: str | None,
    seed: int,
    resamples: int,
    clean_report: str | None,
    benches: tuple[str, ...],
    answer_field: str,
    benchmark_field: str,
    workers: int,
    sandbox: str,
    keep_verify: bool,
) -> None:
    """Score existing responses (from still generate or any harness) without generating.

    Each line is one sample: a problem id (--id-field), the gold answer (--answer-field, or from
    --bench by id), the response, and optionally benchmark, model, sample_idx, finish_reason,
    n_tokens. A truncated sample is counted as truncated, never as wrong; a problem with fewer
    than k samples fails the run.

    \b
    Examples:
      still eval score responses.jsonl --report report.md
      still eval score --bench math500.jsonl -k 4 other-harness.jsonl > scored.jsonl
    """
    from still.core.eval_run import ScoreRequest, score_command

    request = ScoreRequest(
        k=k,
        report_path=report_path,
        plot_path=plot_path,
        seed=seed,
        resamples=resamples,
        clean_report=clean_report,
        benches=benches,
        answer_field=answer_field,
        benchmark_field=benchmark_field,
        workers=workers,
        sandbox=sandbox,
        keep_verify=keep_verify,
        quiet=stream.quiet,
    )
    run_stream("eval", stream, *score_command(request, stream.fields()))


@command.command("run")
@click.option("--model", required=True, metavar="DIR|ID", help="Model to evaluate: a local directory or a hub id.")
@click.option(
    "--engine", type=click.Choice(["hf", "vllm", "openai"]), default="hf", show_default=True, help="Inference backend."
)
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature [default: 0.6, R1].")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), help="Nucleus sampling [default: 0.95].")
@click.option("--max-tokens", type=click.IntRange(min=1), help="New tokens per sample [default: 32768].")
@click.option("--greedy", is_flag=True, help="Greedy decoding (T 0, k 1 unless -k): for reproducibility checks.")
@click.option("--no-thinking", is_flag=True, help="NoThinking mode: prefill a closed <think> block.")
@click.option("--think-prefill", is_flag=True, help="Start every answer with '<think>\\n' (R1 usage advice).")
@click.option("--dtype", default="auto", show_default=True, help="hf/vllm: auto, float32, bfloat16, float16.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="hf: requests per batch.")
@click.option("--base-url", "base_urls", multiple=True, metavar="URL", help="openai: server(s), repeatable.")
@click.option("--template", metavar="FILE.jinja", help="Chat template to use instead of the model's.")
@click.option("--question-field", metavar="NAME", help="Question field of the benchmark files [default: detected].")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write here (atomically) instead of stdout; every sample is journalled in FILE.journal as it finishes.",
)
@click.option(
    "--resume", is_flag=True, help="Continue a killed run from FILE.journal (same options): only what is missing runs."
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors.")
@_report_options
def run(
    model: str,
    engine: str,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    greedy: bool,
    no_thinking: bool,
    think_prefill: bool,
    dtype: str,
    batch_size: int,
    base_urls: tuple[str, ...],
    template: str | None,
    question_field: str | None,
    output: str | None,
    resume: bool,
    quiet: bool,
    k: int | None,
    report_path: str | None,
    plot_path: str | None,
    seed: int,
    resamples: int,
    clean_report: str | None,
    benches: tuple[str, ...],
    answer_field: str,
    benchmark_field: str,
    workers: int,
    sandbox: str,
) -> None:
    """Generate k samples per benchmark problem and score them (the default subcommand).

    k per benchmark by default: AIME 64, AMC 32, MATH-500 4, GSM8K 1, GPQA 8, others 4; R1
    sampling (T 0.6, top_p 0.95, 32768 tokens) and prompt ("Please reason step by step, and put
    your final answer within \\boxed{}." after the question, no system prompt). Every sample has
    its own seed from (--seed, problem, sample index), so results do not depend on batching.

    \b
    Examples:
      still eval --model ckpt/merged --bench math500.jsonl,aime24.jsonl --report r.md > eval.jsonl
      still eval --model M --bench gsm8k.jsonl --greedy --dtype float32 -o greedy.jsonl
    """
    from still.core.eval_run import RunRequest, ScoreRequest, run_eval
    from still.core.fields import Fields

    if not benches:
        raise click.UsageError("--bench is required: benchmark files (JSONL with question and answer) or names")
    options: dict[str, Any] = {"template": template}
    if engine in ("hf", "vllm"):
        options["dtype"] = dtype
    if engine == "hf":
        options["batch_size"] = batch_size
    if engine == "openai":
        if not base_urls:
            raise click.UsageError("--engine openai needs --base-url")
        options["base_urls"] = list(base_urls)
    run_request = RunRequest(
        model=model,
        benches=benches,
        engine=engine,
        k=k,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        greedy=greedy,
        no_thinking=no_thinking,
        think_prefill=think_prefill,
        seed=seed,
        engine_options=tuple(sorted((key, v) for key, v in options.items() if v is not None)),
        question_field=question_field,
        answer_field=answer_field,
        resume=resume,
    )
    score_request = ScoreRequest(
        report_path=report_path,
        plot_path=plot_path,
        seed=seed,
        resamples=resamples,
        clean_report=clean_report,
        workers=workers,
        sandbox=sandbox,
        quiet=quiet,
    )
    stats = run_eval(run_request, score_request, Fields(), output)
    if not quiet:
        if stats.extra.get("resumed"):
            click.echo(
                f"still eval: resumed {stats.extra['resumed']} of {stats.extra['samples']} samples from the journal",
                err=True,
            )
        click.echo(stats.summary(), err=True)


@command.command("compare")
@click.argument("run_a", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.argument("run_b", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstrap.")
@click.option(
    "--resamples", type=click.IntRange(min=100), default=10_000, show_default=True, help="Bootstrap resamples."
)
@click.option("--id-field", default="id", show_default=True, metavar="PATH", help="Problem id on each sample line.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors.")
def compare(run_a: str, run_b: str, seed: int, resamples: int, id_field: str, quiet: bool) -> None:
    """Paired difference B - A of two eval runs per benchmark, with a 95% interval.

    One JSON line per benchmark both runs scored: {eval: compare, benchmark, a, b, n_problems,
    delta, ci95, distinguishable}. Problems are paired by id; the interval comes from a paired
    bootstrap over the problems both runs have.

    \b
    Example:
      still eval compare base.jsonl merged.jsonl | jq -c '{benchmark, delta, ci95, distinguishable}'
    """
    from still.core.eval_run import compare_command

    for line in compare_command(run_a, run_b, seed, resamples, id_field, quiet):
        click.echo(line)
