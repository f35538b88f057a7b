"""``still sample``: deterministic, streaming selection by difficulty, pass rate, CV, length, quotas."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from still.cli._common import StreamOptions, finish, stream_options

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from still.core.jsonl import Record
    from still.core.stats import RunStats


@click.command("sample")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the hash priorities (and coin flips).")
@click.option("-n", "--total", type=int, metavar="N", help="Select N records (bottom-N by seeded priority).")
@click.option("--per-query", type=int, metavar="K", help="At most K responses per query id (per stratum).")
@click.option(
    "--quota",
    metavar="FIELD=v:n,...",
    help="Exact counts per value of FIELD, e.g. domain=math:600,code:400 (other values dropped; "
    "a shortfall is reported when the input has too few).",
)
@click.option(
    "--difficulty-weights",
    metavar="L=w,...",
    help="Draw -n (or each --quota count) across levels of --level-field in these proportions (ZMath).",
)
@click.option(
    "--match",
    "match_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, allow_dash=False),
    help="Reproduce FILE's mix of --level-field (and its size unless -n is given).",
)
@click.option("--level-field", default="difficulty", show_default=True, metavar="PATH", help="Difficulty level field.")
@click.option("--category-field", default="domain", show_default=True, metavar="PATH", help="Category field.")
@click.option("--pass-rate", "pass_rate", metavar="LO..HI", help="Keep queries whose pass rate is in [LO, HI].")
@click.option(
    "--model",
    metavar="M",
    help="Read grade.M.pass_rate / grade.M.cv [default: the only model in the first graded line].",
)
@click.option("--pass-rate-field", metavar="PATH", help="Flat pass-rate field instead of grade.M (e.g. pass_rate_r1).")
@click.option("--cv-field", metavar="PATH", help="Flat CV field instead of grade.M.cv.")
@click.option(
    "--cv-min",
    metavar="X|CAT=X,...",
    help="Keep queries with CV >= X; per category (by --category-field), '*' for the rest.",
)
@click.option(
    "--score-field",
    default="verify.score",
    show_default=True,
    metavar="PATH",
    help="Per-response score, for pass rate / CV computed here and DeepDistill's passing responses.",
)
@click.option(
    "--passing",
    "passing_only",
    is_flag=True,
    help="Keep only responses whose --score-field passes their category's --pass-threshold "
    "(e.g. verified-correct traces after still verify).",
)
@click.option(
    "--pass-threshold",
    metavar="CAT=T,...",
    help="A response passes when score > T [default: DeepDistill math/code/if 0.99, other/multiturn 0.7, "
    "science 0.998 (its 4.99 of 5, on [0,1] scores), *=0.99].",
)
@click.option(
    "--cv-ddof",
    type=click.IntRange(0, 1),
    default=1,
    show_default=True,
    help="CV denominator when computed here: 1 = sample std (DeepDistill's worked examples), 0 = population.",
)
@click.option(
    "--query-stats",
    type=click.Choice(["auto", "grade", "adjacent"]),
    default="auto",
    show_default=True,
    help="Where pass rate/CV come from: grade fields on each line, or --score-field over adjacent lines "
    "with the same id; auto picks grade when the first line has it.",
)
@click.option("--length-top", type=click.FloatRange(0, 1), metavar="F", help="Keep the longest fraction F.")
@click.option("--length-band", metavar="LO..HI", help="Keep length quantiles LO..HI (e.g. 0.5..0.9).")
@click.option(
    "--length-unit",
    type=click.Choice(["tokens", "chars"]),
    default="tokens",
    show_default=True,
    help="Length in --length-field tokens or response characters.",
)
@click.option("--length-field", default="n_tokens", show_default=True, metavar="PATH", help="Token count field.")
@click.option(
    "--difficulty-top",
    type=click.FloatRange(0, 1),
    metavar="F",
    help="Keep the fraction F with the highest numeric --level-field.",
)
@click.option(
    "--preset",
    type=click.Choice(["deepdistill-stage1", "deepdistill-stage2", "openthoughts"]),
    help="A published recipe (see docs/sample.md); combinable with the options above.",
)
@click.option(
    "--cv-threshold",
    metavar="CAT=CVt,...",
    help="DeepDistill CVt per category ('*' for the rest); required by the deepdistill presets.",
)
@click.option("--stages", type=click.IntRange(min=1), metavar="N", help="Split the selection into N curriculum files.")
@click.option("--stage-by", default="difficulty", show_default=True, metavar="PATH", help="Field ordering the stages.")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="'PATH OP X'",
    help="Keep records whose numeric field passes, e.g. 'score.ppl<20' (OP: < <= > >= == !=; repeatable, all "
    "must hold; a missing field fails). Applied before every other rule.",
)
@stream_options  # type: ignore[untyped-decorator,unused-ignore]
def command(
    stream: StreamOptions,
    where: tuple[str, ...],
    seed: int,
    total: int | None,
    per_query: int | None,
    quota: str | None,
    difficulty_weights: str | None,
    match_file: str | None,
    level_field: str,
    category_field: str,
    pass_rate: str | None,
    model: str | None,
    pass_rate_field: str | None,
    cv_field: str | None,
    cv_min: str | None,
    score_field: str,
    passing_only: bool,
    pass_threshold: str | None,
    cv_ddof: int,
    query_stats: str,
    length_top: float | None,
    length_band: str | None,
    length_unit: str,
    length_field: str,
    difficulty_top: float | None,
    preset: str | None,
    cv_threshold: str | None,
    stages: int | None,
    stage_by: str,
) -> None:
    """Select a training set: by difficulty mix, pass rate, CV, length, quotas and presets.

    Deterministic and order-independent: every record gets a seeded xxh3 priority from its id and
    response, and each stratum keeps its N lowest (bottom-k), so the same input in any order or
    chunking gives the same set for the same --seed. One streaming pass; memory grows with the
    number of records selected, not with the input (a quantile band reads files twice, stdin is
    spooled to a temporary file). Selected records held for a count are written at the end,
    stratum by stratum, in priority order; pure filters stream in input order.

    \b
    Examples:
      still sample --quota domain=math:600,code:400 --per-query 1 < verified.jsonl
      still sample --difficulty-weights L1=4,L2=3,L3=2,L4=1 -n 2000 < graded.jsonl   # ZMath
      still sample --pass-rate 0.25..0.75 --model qwen-7b < graded.jsonl              # Phi-4 band
      still sample --pass-rate 0.01..1 --pass-rate-field pass_rate_r1 < am40m.jsonl
      still sample --preset deepdistill-stage1 --cv-threshold math=0.3,code=0.2,*=0.25
      still sample --preset openthoughts --length-top 0.25 --per-query 16
      still sample --stages 2 --stage-by difficulty -o curriculum   # curriculum.stage1.jsonl ...
      still score -m ref < sft.jsonl | still sample --where 'score.ppl<20' --where 'score.rep_ngram_frac<0.2'
    """
    from still.core.errors import UsageError
    from still.core.sample import SampleConfig, parse_band, parse_mapping, parse_quota
    from still.core.where import parse_condition

    conditions = [parse_condition(w) for w in where]

    if stages is not None and not stream.output:
        raise UsageError("--stages needs -o PREFIX (files PREFIX.stage1.jsonl ... are written)")
    bands = [x is not None for x in (length_top, length_band, difficulty_top)]
    if sum(bands) > 1:
        raise UsageError("give only one of --length-top, --length-band, --difficulty-top")
    if difficulty_weights and match_file:
        raise UsageError("give --difficulty-weights or --match, not both")
    band: tuple[float, float] | None = None
    band_value = length_unit
    if length_top is not None:
        band = (1.0 - length_top, 1.0)
    elif length_band is not None:
        band = parse_band(length_band)
    elif difficulty_top is not None:
        band = (1.0 - difficulty_top, 1.0)
        band_value = "level"
    quota_field, quota_targets = parse_quota(quota) if quota else (None, {})
    weights: dict[str, float] = parse_mapping(difficulty_weights, "--difficulty-weights") if difficulty_weights else {}
    if match_file:
        from still.core.jsonl import read_records
        from still.core.sample import read_level_mix
        from still.core.stats import RunStats

        weights = read_level_mix(read_records([match_file], RunStats("sample")), level_field)
        if total is None and not quota:
            total = int(sum(weights.values()))
    from still.core.sample import DEEPDISTILL_PASS_THRESHOLDS

    thresholds = dict(DEEPDISTILL_PASS_THRESHOLDS)
    if pass_threshold:
        thresholds.update(parse_mapping(pass_threshold, "--pass-threshold"))
    config = SampleConfig(
        fields=stream.fields(),
        seed=seed,
        total=total,
        per_query=per_query,
        quota_field=quota_field,
        quota=quota_targets,
        level_field=level_field,
        level_weights=weights,
        category_field=category_field,
        model=model,
        pass_rate_field=pass_rate_field,
        cv_field=cv_field,
        score_field=score_field,
        pass_rate_band=parse_band(pass_rate) if pass_rate else None,
        cv_min=parse_mapping(cv_min, "--cv-min") if cv_min else {},
        pass_thresholds=thresholds,
        cv_ddof=cv_ddof,
        query_stats=query_stats,
        band=band,
        band_value=band_value,
        length_field=length_field,
        preset=preset,
        cv_threshold=parse_mapping(cv_threshold, "--cv-threshold") if cv_threshold else {},
        passing_only=passing_only,
    )
    config.validate()
    if not config.selects and not conditions and stages is None and not stream.quiet:
        click.echo(
            "still sample: no selection option (-n, --per-query, --quota, --pass-rate, --cv-min, --passing, "
            "--length-top, --preset, ...): every record passes through",
            err=True,
        )
    _run(stream, config, stages, stage_by, conditions)


def _run(stream: StreamOptions, config: Any, stages: int | None, stage_by: str, conditions: list[Any]) -> None:
    import contextlib
    import dataclasses
    import os
    import tempfile

    from still.core.fields import shard_filter
    from still.core.jsonl import AtomicOutput, ErrorPolicy, read_records, write_records
    from still.core.sample import run_sample
    from still.core.stats import RunStats

    stats = RunStats("sample")
    inputs = list(stream.inputs or ("-",))
    spooled: str | None = None
    with contextlib.ExitStack() as cleanup:
        if config.band is not None and "-" in inputs:
            # a quantile band reads the input twice: stdin is copied to a temporary file first
            fd, spooled = tempfile.mkstemp(prefix="still-sample-", suffix=".jsonl")
            cleanup.callback(os.unlink, spooled)
            with os.fdopen(fd, "wb") as spool:
                while chunk := sys.stdin.buffer.read(1 << 20):
                    spool.write(chunk)
            inputs = [spooled if x == "-" else x for x in inputs]
        max_bytes = int(stream.max_line_mb * 1024 * 1024)
        shard = stream.parsed_shard()
        fields = stream.fields()
        reader = _as_stdin(read_records(inputs, stats, stream.policy(), max_bytes), spooled)
        records = shard_filter(reader, shard, fields, stats)
        if conditions:
            from still.core.where import filter_where

            records = filter_where(records, conditions, stats)
        if config.groups_by_query is not None:
            from still.core.fields import check_query_ids

            records = check_query_ids(records, fields, stats, config.groups_by_query)
        first_pass = None
        if config.band is not None:
            policy = stream.policy()
            quiet_policy = ErrorPolicy("skip") if policy.mode == "quarantine" else policy
            scratch = RunStats("sample")
            first_reader = _as_stdin(read_records(inputs, scratch, quiet_policy, max_bytes), spooled)
            first_pass = shard_filter(first_reader, shard, fields, scratch)
            if conditions:
                from still.core.where import filter_where

                first_pass = filter_where(first_pass, conditions, scratch)
        # only curriculum stages look at the selected records' fields; the writer needs their bytes
        config = dataclasses.replace(config, parse_selected=stages is not None)
        selected = run_sample(records, config, stats, first_pass)
        if stages is None:
            with AtomicOutput(stream.output, stream.gzip_level) as sink:
                write_records(selected, sink, stats)
        else:
            _write_stages(selected, stream.output or "stages", stages, stage_by, stats)
    stats.check_balance()
    if not stream.quiet:
        _print_summary(stats)
    finish(stats, stream)


def _as_stdin(records: Iterator[Record], spooled: str | None) -> Iterator[Record]:
    """Name lines read back from the stdin spool ``<stdin>``, as the user gave them."""
    if spooled is None:
        return records
    return _renamed(records, spooled)


def _renamed(records: Iterator[Record], spooled: str) -> Iterator[Record]:
    from still.core.errors import BadInput

    try:
        for rec in records:
            if rec.source == spooled:
                rec.source = "<stdin>"
            yield rec
    except BadInput as exc:
        if exc.source != spooled:
            raise
        raise BadInput("<stdin>", exc.line, exc.message) from None


def _write_stages(records: Iterable[Record], prefix: str, n_stages: int, stage_by: str, stats: RunStats) -> None:
    """Spool records per value of ``stage_by``, then write PREFIX.stageK.jsonl (K = 1..N)."""
    import shutil
    import tempfile

    from still.core.errors import UsageError
    from still.core.fields import get_path, is_missing
    from still.core.jsonl import AtomicOutput
    from still.core.sample import stage_of_values, value_key

    with tempfile.TemporaryDirectory(prefix="still-stages-") as tmp:
        spools: dict[str, Any] = {}
        counts: dict[str, int] = {}
        try:
            for rec in records:
                v = get_path(rec.data, stage_by)
                if is_missing(v) or v is None:
                    stats.reject(rec, f"no {stage_by} (needed by --stages)")  # --on-error decides
                    continue
                key = value_key(v)
                if key not in spools:
                    if len(spools) >= 4096:
                        raise UsageError(f"--stage-by {stage_by}: more than 4096 distinct values")
                    spools[key] = open(f"{tmp}/{len(spools)}.jsonl", "w+b")  # noqa: SIM115 - closed below
                    counts[key] = 0
                spools[key].write(rec.to_bytes())
                counts[key] += 1
            assignment = stage_of_values(counts, n_stages)
            per_stage: list[dict[str, int]] = [{} for _ in range(n_stages)]
            for value, stage in assignment.items():
                per_stage[stage][value] = counts[value]
            for i in range(n_stages):
                with AtomicOutput(f"{prefix}.stage{i + 1}.jsonl") as sink:
                    for value in per_stage[i]:
                        spool = spools[value]
                        spool.seek(0)
                        shutil.copyfileobj(spool, sink)
                        stats.written += counts[value]
            stats.extra.setdefault("sample", {})["stages"] = [
                {"file": f"{prefix}.stage{i + 1}.jsonl", stage_by: per_stage[i], "records": sum(per_stage[i].values())}
                for i in range(n_stages)
            ]
        finally:
            for spool in spools.values():
                spool.close()


def _print_summary(stats: RunStats) -> None:
    info: dict[str, Any] = stats.extra.get("sample", {})
    lines: list[str] = []
    for s in info.get("strata", []):
        label = ",".join(f"{k}={v}" for k, v in s["stratum"].items()) or "all"
        target = "all" if s["target"] is None else s["target"]
        short = f", SHORTFALL {s['shortfall']}" if s["shortfall"] else ""
        lines.append(f"  stratum {label}: selected {s['selected']} of {target}{short}")
    for name, dist in info.get("distribution", {}).items():
        if dist and set(dist) != {"(none)"}:
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in dist.items()))
    if "band" in info:
        b = info["band"]
        span = f"{_num(b['from'])}..{_num(b['to'])}"
        lines.append(f"  band: kept {b['kept']} of {b['values']} (values {span}, ties at the edges by priority)")
    if "note" in info:
        lines.append(f"  note: {info['note']}")
    for st in info.get("stages", []):
        lines.append(f"  {st['file']}: {st['records']} records")
    if lines:
        click.echo("still sample:\n" + "\n".join(lines), err=True)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
