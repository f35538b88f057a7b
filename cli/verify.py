"""``still verify``: add a verdict to every record (math, multiple choice, code)."""

from __future__ import annotations

from typing import Any

import click

from still.cli._common import StreamOptions, run_stream, stream_options
from still.cli._engine import ENGINE_KEYS, EngineChoice, engine_options, refuse_unused


@click.command("verify")
@click.option(
    "--mode",
    type=click.Choice(["auto", "math", "mc", "code"]),
    default="auto",
    show_default=True,
    help="auto: records with tests are code, with choices multiple choice, the rest math/short answer.",
)
@click.option("--answer-field", default="answer", show_default=True, metavar="PATH", help="Reference answer.")
@click.option(
    "--choices-field", default="choices", show_default=True, metavar="PATH", help="Multiple-choice options (a list)."
)
@click.option(
    "--tests-field",
    metavar="PATH",
    help="Reference tests for code [default: tests, else test, test_code, input_output].",
)
@click.option(
    "--finish-reason-field",
    default="finish_reason",
    show_default=True,
    metavar="PATH",
    help="A value of 'length' makes the verdict 'truncated'.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    help="Hard cap in seconds per math comparison; the worker is killed and the verdict is 'timeout'.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Math worker processes (output is identical for any number).",
)
@click.option(
    "--fallback",
    "fallbacks",
    multiple=True,
    type=click.Choice(["last-number", "last-math", "last-line"]),
    help="Where to look when there is no \\boxed{}, 'final answer is' or 'Answer:' line (repeatable, in order).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Anchored answers only (\\boxed{}, 'final answer is', 'Answer:' and --fallback rules): an unanchored "
    "answer is no_answer. Pick it to filter training data, where an unboxed answer is a format failure; "
    "the default (also reading what math-verify's extraction finds) is for evaluating students and base models.",
)
@click.option(
    "--ordered-lists",
    is_flag=True,
    help="Compare a bare list 'a, b, c' in order (MATH's string grader) instead of as a set.",
)
@click.option(
    "--sandbox",
    type=click.Choice(["auto", "bwrap", "unshare", "none"]),
    default="auto",
    show_default=True,
    help="Code isolation (see docs/verify.md 'Code and the sandbox'); none only with a loud warning.",
)
@click.option(
    "--code-timeout",
    type=click.FloatRange(min=0.1),
    default=6.0,
    show_default=True,
    help="Seconds per code run.",
)
@click.option(
    "--memory-mb", type=click.IntRange(min=16), default=1024, show_default=True, help="Memory limit per code run."
)
@click.option(
    "--exit-status",
    is_flag=True,
    help="Exit 1 when any verdict is not 'correct' or 'pass' (like jq -e); output is written in full anyway.",
)
@click.option("--judge", "judge_model", metavar="MODEL", help="Judge answers the rules could not confirm with MODEL.")
@click.option(
    "--judge-samples", type=click.IntRange(min=1), default=1, show_default=True, help="Judgements per answer."
)
@click.option(
    "--judge-aggregate",
    type=click.Choice(["majority", "pessimistic"]),
    default="majority",
    show_default=True,
    help="Heimdall's vote: more yes than no (a tie is wrong), or wrong on any no.",
)
@click.option("--judge-all", is_flag=True, help="Judge every answer, also those the rules found correct.")
@click.option("--judge-seed", type=int, default=0, show_default=True, help="Seed of the judge's samples.")
@click.option(
    "--reward-model",
    metavar="MODEL",
    help="Score records with no answer, tests or choices (the 'other' category) with this sequence-classification "
    "reward model; see docs/verify.md.",
)
@click.option(
    "--reward-threshold",
    type=click.FloatRange(0, 1),
    default=0.7,
    show_default=True,
    help="Verdict correct when the reward score (sigmoid of the logit) is above it (DeepDistill's 'other' 0.7).",
)
@click.option(
    "--reward-batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Reward model batch."
)
@click.option(
    "--reward-max-length",
    type=click.IntRange(min=2),
    default=4096,
    show_default=True,
    help="Tokens per query+response; longer pairs are cut (counted, marked in verify.reward).",
)
@click.option("--reward-dtype", default="auto", show_default=True, help="Reward model dtype.")
@click.option("--reward-device", default="auto", show_default=True, help="Reward model device: cpu, cuda, cuda:N.")
@click.option("--reward-template", type=click.Path(dir_okay=False), metavar="FILE.jinja", help="Its chat template.")
@engine_options("judge", max_tokens=2048, what="the judge")
@stream_options
def command(
    stream: StreamOptions,
    reward_model: str | None,
    reward_threshold: float,
    reward_batch_size: int,
    reward_max_length: int,
    reward_dtype: str,
    reward_device: str,
    reward_template: str | None,
    judge_model: str | None,
    judge_samples: int,
    judge_aggregate: str,
    judge_all: bool,
    judge_seed: int,
    judge_engine_choice: EngineChoice,
    mode: str,
    answer_field: str,
    choices_field: str,
    tests_field: str | None,
    finish_reason_field: str,
    timeout_s: float,
    workers: int,
    fallbacks: tuple[str, ...],
    strict: bool,
    ordered_lists: bool,
    sandbox: str,
    code_timeout: float,
    memory_mb: int,
    exit_status: bool,
) -> int:
    """Add a verdict to every record: math answers, multiple choice and code.

    Each record gets verify: {verdict, score, extracted, method, reason}. Verdicts for answers:
    correct, wrong, no_answer, truncated (<think> never closed, or finish_reason length), timeout,
    error; for code: pass, wrong_answer, time_limit, memory_limit, output_limit, runtime_error,
    compile_error. score is 1/0 for answers and the fraction of tests passed for code.

    Math: the answer after the last </think> (last \\boxed{} or group of boxes, 'final answer is'
    sentence, 'Answer:' line; then, unless --strict, a response that is only a number and
    math-verify's own extraction), compared by normalised string, exact integers, fractions and
    decimals ('023' == '23'), then math-verify in worker processes killed at --timeout, with
    guards against its known false positives. Multiple choice: only anchored letters ('Answer: C',
    \\boxed{C}, '(C)' alone on the last line), never a letter picked out of prose.

    \b
    Examples:
      still verify < responses.jsonl > verified.jsonl
      still verify --workers 4 --fallback last-number gsm8k.jsonl | jq -c .verify
      still verify -q --exit-status < one.jsonl && echo all correct
      still verify --strict traces.jsonl | jq -c 'select(.verify.verdict == "correct")' > sft.jsonl
      still verify --reward-model ./reward-model mixed.jsonl   # 'other' records: reward score > 0.7
    """
    import dataclasses

    from still.core.verify import VerifyConfig, all_passed, has_no_reference, verify_records
    from still.core.verify_math import MathConfig

    config = VerifyConfig(
        mode=mode,
        fields=stream.fields(),
        answer_field=answer_field,
        choices_field=choices_field,
        tests_field=tests_field,
        finish_reason_field=finish_reason_field,
        math=MathConfig(
            timeout_s=timeout_s, workers=workers, fallbacks=fallbacks, ordered_lists=ordered_lists, strict=strict
        ),
        sandbox=sandbox,
        code_timeout_s=code_timeout,
        code_memory_mb=memory_mb,
    )
    if reward_model is not None:
        config = dataclasses.replace(config, skip=lambda rec: has_no_reference(rec, config))
    else:
        reward_only = ("reward_threshold", "reward_batch_size", "reward_max_length", "reward_dtype", "reward_device")
        refuse_unused((*reward_only, "reward_template"), "--reward-model MODEL")
    outcome = {"passed": True}

    def summarise(stats: object) -> None:
        from still.core.stats import RunStats

        assert isinstance(stats, RunStats)
        outcome["passed"] = all_passed(stats)
        if not stream.quiet:
            counts = stats.extra.get("verdicts", {})
            text = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
            click.echo(f"still verify: verdicts: {text}", err=True)
            judge = stats.extra.get("judge")
            if judge:
                keys = ("judged", "overturned", "no_verdict", "unparsed_samples")
                click.echo("still verify: judge: " + ", ".join(f"{k} {judge[k]}" for k in keys), err=True)
            reward = stats.extra.get("reward")
            if reward:
                keys = ("scored", "correct", "wrong", "truncated")
                click.echo("still verify: reward model: " + ", ".join(f"{k} {reward[k]}" for k in keys), err=True)

    judge_engine: dict[str, Any] = {}
    if judge_model is None:
        judge_only = ("judge_samples", "judge_aggregate", "judge_all", "judge_seed")
        refuse_unused(judge_only + tuple(f"judge_{k}" for k in ENGINE_KEYS), "--judge MODEL")
    else:
        shared, bound = judge_engine_choice.model_options([judge_model])
        judge_engine = {**shared, **bound.get(judge_model, {})}

    def process(records: Any, stats: Any) -> Any:
        verified = verify_records(records, config, stats)
        if reward_model is not None:
            from still.core.verify_reward import RewardConfig, reward_records

            reward = RewardConfig(
                model=reward_model,
                threshold=reward_threshold,
                dtype=reward_dtype,
                device=reward_device,
                batch_size=reward_batch_size,
                max_length=reward_max_length,
                template=reward_template,
                fields=stream.fields(),
            )
            verified = reward_records(verified, reward, lambda rec: has_no_reference(rec, config), stats)
        if judge_model is None:
            return verified
        from still.core.verify_judge import JudgeConfig, judge_records

        judge = JudgeConfig(
            model=judge_model,
            engine=judge_engine_choice.engine,
            engine_options=judge_engine,
            samples=judge_samples,
            how=judge_aggregate,
            seed=judge_seed,
            params=judge_engine_choice.params(),
            judge_all=judge_all,
            fields=stream.fields(),
            answer_field=answer_field,
        )
        return judge_records(verified, judge, stats)

    run_stream("verify", stream, process, on_success=summarise)
    return 1 if exit_status and not outcome["passed"] else 0
