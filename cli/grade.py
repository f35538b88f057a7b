"""``still grade``: pass rate, mean score and CV per query and model, and a difficulty level."""

from __future__ import annotations

from typing import Any

import click

from still.cli._common import StreamOptions, finish, run_stream, stream_options
from still.cli._engine import ENGINE_KEYS, EngineChoice, engine_options, refuse_unused, resume_option


@click.command("grade")
@click.option("--model-field", default="model", show_default=True, metavar="PATH", help="Field naming the model.")
@click.option("--category-field", default="domain", show_default=True, metavar="PATH", help="Category field.")
@click.option(
    "--score-field",
    default="verify.score",
    show_default=True,
    metavar="PATH",
    help="Per-response score; records with neither it nor a verify object are verified here.",
)
@click.option(
    "--pass-threshold",
    metavar="CAT=T,...",
    help="A response passes when score > T [default: DeepDistill math/code/if 0.99, other/multiturn 0.7, "
    "science 0.998 (its 4.99 of 5, on verify's 0-1 scores; science=4.99 for 0-5 scores), *=0.99].",
)
@click.option(
    "--cv-ddof",
    type=click.IntRange(0, 1),
    default=1,
    show_default=True,
    help="CV denominator: 1 = sample std (DeepDistill's worked examples), 0 = population (its Eq. 6).",
)
@click.option(
    "--levels",
    type=click.Choice(["bands", "am", "adaptive", "none"]),
    default="bands",
    show_default=True,
    help="Difficulty scheme: pass-rate bands, AM's multi-model L1-L3, ZMath's student-adaptive levels.",
)
@click.option(
    "--level-model",
    metavar="M",
    help="bands: whose pass rate [default: the mean over models]; adaptive: the student [default: the only model].",
)
@click.option(
    "--band-edges",
    default="0.75,0.5,0.25,0",
    show_default=True,
    metavar="P,...",
    help="bands: level 1 is pass rate > the first edge, 2 > the second, ...; the last level is the rest.",
)
@click.option("--am-models", metavar="SMALL,MEDIUM[,REF]", help="am: the models in the paper's roles (1.5B, 7B, R1).")
@click.option(
    "--easy-pass-rate",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="adaptive: the student's pass rate at which a query is easy (level 1).",
)
@click.option(
    "--adaptive-bins",
    default="0.75,0.5,0.25",
    show_default=True,
    metavar="P,...",
    help="adaptive: levels 2, 3, ... by the teachers' mean pass rate (> each bin), the last level below.",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Verify workers.")
@click.option("--answer-field", default="answer", show_default=True, metavar="PATH", help="Reference answer.")
@click.option(
    "--spill-after",
    type=click.IntRange(min=1),
    default=500_000,
    show_default=True,
    metavar="N",
    help="Response keys held in memory (~150 bytes each) before they go to disk partitions.",
)
@click.option(
    "-m",
    "--model",
    "models",
    multiple=True,
    metavar="M",
    help="Generate -k responses per query from each model here (repeatable); see docs/grade.md.",
)
@click.option(
    "-k",
    "--samples",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="With --model: responses per query.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="With --model: seed of every sample.")
@resume_option
@engine_options(what="--model")
@stream_options
def command(
    stream: StreamOptions,
    models: tuple[str, ...],
    samples: int,
    seed: int,
    resume: bool,
    engine_choice: EngineChoice,
    model_field: str,
    category_field: str,
    score_field: str,
    pass_threshold: str | None,
    cv_ddof: int,
    levels: str,
    level_model: str | None,
    band_edges: str,
    am_models: str | None,
    easy_pass_rate: float,
    adaptive_bins: str,
    workers: int,
    answer_field: str,
    spill_after: int,
) -> None:
    """Pass rate, mean score and CV per query and model, and a difficulty level.

    Groups the responses of each query (id) by model, whatever the input order (spooled to disk;
    memory stays bounded), verifies those without a score (the verify core, in process), and writes
    every line back in input order with grade: {MODEL: {pass_rate, mean_score, cv, n, n_truncated}}
    and difficulty (an integer, higher = harder; null when the scheme gives none) of its query, so
    `still sample` reads them with no join. See docs/grade.md for the definitions and sources.

    \b
    Examples:
      still verify < responses.jsonl | still grade > graded.jsonl
      still grade --levels am --am-models 1.5b,7b,r1 < graded-by-three.jsonl
      still grade --levels adaptive --level-model student < mixed.jsonl
      still grade < verified.jsonl | still sample --preset deepdistill-stage1 --cv-threshold '*=0.3'
    """
    from still.core.grade import GradeConfig, grade_records
    from still.core.grade_levels import LevelConfig, parse_rates
    from still.core.sample import DEEPDISTILL_PASS_THRESHOLDS, parse_mapping
    from still.core.verify import VerifyConfig
    from still.core.verify_math import MathConfig

    thresholds = dict(DEEPDISTILL_PASS_THRESHOLDS)
    if pass_threshold:
        thresholds.update(parse_mapping(pass_threshold, "--pass-threshold"))
    level_config = LevelConfig(
        scheme=levels,
        level_model=level_model,
        band_edges=parse_rates(band_edges, "--band-edges"),
        am_models=tuple(m.strip() for m in am_models.split(",")) if am_models else (),
        easy_pass_rate=easy_pass_rate,
        adaptive_bins=parse_rates(adaptive_bins, "--adaptive-bins"),
    )
    config = GradeConfig(
        fields=stream.fields(),
        model_field=model_field,
        category_field=category_field,
        score_field=score_field,
        pass_thresholds=thresholds,
        cv_ddof=cv_ddof,
        levels=level_config,
        verify=VerifyConfig(fields=stream.fields(), answer_field=answer_field, math=MathConfig(workers=workers)),
        spill_after=spill_after,
    )
    config.validate()

    def summarise(stats: Any) -> None:
        if stream.quiet:
            return
        info = stats.extra.get("grade", {})
        levels_seen = ", ".join(f"{k}: {v}" for k, v in info.get("difficulty", {}).items()) or "none"
        click.echo(f"still grade: {info.get('queries', 0)} queries; per difficulty ({levels}) {levels_seen}", err=True)
        for name, m in info.get("models", {}).items():
            click.echo(
                f"  {name}: {m['responses']} responses, mean pass rate {m['mean_pass_rate']:.3f}",
                err=True,
            )
        for reason, n in info.get("unlevelled", {}).items():
            click.echo(f"  no level: {reason}: {n}", err=True)
        for note in info.get("notes", []):
            click.echo(f"still grade: warning: {note}", err=True)

    if not models:
        refuse_unused(("samples", "seed", "resume", *ENGINE_KEYS), "--model (generating the responses here)")
        run_stream("grade", stream, lambda records, stats: grade_records(records, config, stats), on_success=summarise)
        return
    if len(set(models)) != len(models):
        from still.core.errors import UsageError

        raise UsageError("--model names a model twice")
    _generate_and_grade(stream, config, models, samples, seed, resume, engine_choice, summarise)


def _generate_and_grade(
    stream: StreamOptions,
    config: Any,
    models: tuple[str, ...],
    samples: int,
    seed: int,
    resume: bool,
    engine_choice: EngineChoice,
    summarise: Any,
) -> None:
    """Queries (and other models' responses) in, graded responses out; each kind accounted."""
    from still.core.fields import shard_filter
    from still.core.generate import GenerateConfig, journal_key
    from still.core.grade_generate import generate_and_grade, rejecting
    from still.core.journal import output_journal
    from still.core.jsonl import AtomicOutput, read_records, write_records
    from still.core.stats import RunStats

    engine_options, model_options = engine_choice.model_options(models)
    generate = GenerateConfig(
        models=models,
        engine=engine_choice.engine,
        engine_options=engine_options,
        model_options=model_options,
        samples=samples,
        params=engine_choice.params(),
        seed=seed,
        fields=stream.fields(),
    )
    # the generated responses are journalled next to -o FILE as they finish: --resume after a kill
    # generates only the missing ones (the grading pass reruns; it is deterministic and quick)
    fingerprint = {**generate.fingerprint(), "shard": stream.shard, "command": "grade"}
    journal = output_journal(stream.output, fingerprint, journal_key(generate.fields), resume=resume)
    input_stats = RunStats("grade")
    stats = RunStats("grade")
    policy = stream.policy()

    fail = policy.mode == "fail"
    stats.on_bad = rejecting(stats, fail)
    lines = read_records(stream.inputs or ("-",), input_stats, policy, int(stream.max_line_mb * 1024 * 1024))
    lines = shard_filter(lines, stream.parsed_shard(), stream.fields(), input_stats)
    with AtomicOutput(stream.output) as sink:
        write_records(generate_and_grade(lines, generate, config, input_stats, stats, fail, journal), sink, stats)
    if journal is not None:
        journal.remove()
    input_stats.check_balance()
    stats.check_balance()
    summarise(stats)
    if not stream.quiet:
        g, i = stats.extra["generate"], stats.extra["input"]
        click.echo(
            f"still grade: input {i['lines']} lines ({i['responses_kept']} responses kept); "
            f"generated {g.get('responses', 0)} responses for {g['generated_for']} of {g['queries']} queries",
            err=True,
        )
    finish(stats, stream)
