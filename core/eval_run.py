"""What the ``still eval`` subcommands run: options in, a record processor and its follow-up out."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from still import __version__
from still.core.errors import StillError, UsageError
from still.core.eval import ScoreConfig, score_records
from still.core.eval_bench import Benchmark, Problem, load_benchmarks
from still.core.eval_compare import compare_runs, read_run
from still.core.fields import Fields, get_path, is_missing
from still.core.jsonl import AtomicOutput, ErrorPolicy, Record, read_records
from still.core.stats import RunStats
from still.core.verify import VerifyConfig
from still.core.verify_math import MathConfig

Processor = Callable[[Iterator[Record], RunStats], Iterable[Record]]


@dataclass(frozen=True)
class ScoreRequest:
    k: int | None = None
    report_path: str | None = None
    plot_path: str | None = None
    seed: int = 0
    resamples: int = 10_000
    clean_report: str | None = None
    benches: tuple[str, ...] = ()
    answer_field: str = "answer"
    benchmark_field: str = "benchmark"
    workers: int = 1
    sandbox: str = "auto"
    keep_verify: bool = False
    quiet: bool = False


def contaminated_items(report_path: str) -> dict[str, set[str]]:
    """Benchmark name -> ids of the items a ``still decontam --report`` file says were hit."""
    try:
        report = orjson.loads(Path(report_path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UsageError(f"--clean-only {report_path}: cannot read a decontam report ({exc})") from exc
    if not isinstance(report, dict) or report.get("command") != "decontam":
        raise UsageError(f"--clean-only {report_path}: not a `still decontam --report` file")
    return {str(b["name"]): {str(h["item"]) for h in b.get("hit_items", [])} for b in report.get("benchmarks", [])}


def _gold_filler(
    benches: list[Benchmark], answer_field: str, benchmark_field: str, fields: Fields
) -> Callable[[Record], None]:
    """Fill a line's gold answer (or tests) from the benchmark, by problem id, where it has none."""
    by_id: dict[tuple[str, str], Problem] = {(b.name, p.id): p for b in benches for p in b.problems}
    only = benches[0].name if len(benches) == 1 else None

    def fill(rec: Record) -> None:
        if not by_id or not is_missing(get_path(rec.data, answer_field)) or "tests" in rec.data:
            return
        bench = get_path(rec.data, benchmark_field)
        name = only if is_missing(bench) else str(bench)
        problem = by_id.get((name or "", str(get_path(rec.data, fields.id_path))))
        if problem is None:
            return
        data = rec.changed()
        if problem.answer is not None:
            data[answer_field] = problem.answer
        else:
            data["tests"] = problem.tests
            data.update(problem.extra)

    return fill


def score_command(request: ScoreRequest, fields: Fields) -> tuple[Processor, Callable[[RunStats], None]]:
    """The processor and on-success step of ``still eval score``."""
    benches = load_benchmarks(request.benches) if request.benches else []
    excluded_ids = contaminated_items(request.clean_report) if request.clean_report else {}
    config = ScoreConfig(
        verify=VerifyConfig(
            fields=fields,
            answer_field=request.answer_field,
            math=MathConfig(workers=request.workers),
            sandbox=request.sandbox,
        ),
        k=request.k,
        benchmark_field=request.benchmark_field,
        # lines without a benchmark name answer the one benchmark given, if there is one
        default_benchmark=benches[0].name if len(benches) == 1 else "bench",
        problem_field=fields.id_path,
        seed=request.seed,
        resamples=request.resamples,
        reverify=not request.keep_verify,
        fingerprint={"still_version": __version__, "mode": "score"},
        checksums={b.name: b.sha256 for b in benches},
    )
    fill = _gold_filler(benches, request.answer_field, request.benchmark_field, fields)
    excluded: dict[str, set[str]] = {}

    def clean(records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
        for rec in records:
            bench_value = get_path(rec.data, request.benchmark_field)
            bench = config.default_benchmark if is_missing(bench_value) else str(bench_value)
            pid = str(get_path(rec.data, fields.id_path))
            if pid in excluded_ids.get(bench, ()):
                excluded.setdefault(bench, set()).add(pid)
                stats.drop("contaminated benchmark item (--clean-only)")
                continue
            fill(rec)
            yield rec

    summaries: list[dict[str, Any]] = []

    def process(records: Iterator[Record], stats: RunStats) -> Iterator[Record]:
        for rec in score_records(clean(records, stats), config, stats):
            if rec.data.get("eval") == "summary":
                rec.data["excluded"] = len(excluded.get(str(rec.data["benchmark"]), ()))
                summaries.append(rec.data)
            yield rec

    def after(stats: RunStats) -> None:
        if excluded and not request.quiet:
            text = ", ".join(f"{b} {len(ids)}" for b, ids in sorted(excluded.items()))
            print(f"still eval: --clean-only left out contaminated problems: {text}", file=sys.stderr)
        write_outputs(summaries, request.report_path, request.plot_path)

    return process, after


def write_outputs(summaries: list[dict[str, Any]], report_path: str | None, plot_path: str | None) -> None:
    """``--report`` and ``--plot`` files, each written atomically."""
    if report_path:
        from still.core.eval_report import markdown_report

        with AtomicOutput(report_path) as out:
            out.write(markdown_report(summaries).encode())
    if plot_path:
        from still.core.eval_report import plot_summaries

        buffer = io.BytesIO()
        plot_summaries(summaries, buffer)
        with AtomicOutput(plot_path) as out:
            out.write(buffer.getvalue())


def _read_file(path: str) -> list[Record]:
    stats = RunStats("eval compare")
    return list(read_records((path,), stats, ErrorPolicy.parse("fail"), 64 * 1024 * 1024))


def compare_command(path_a: str, path_b: str, seed: int, resamples: int, id_field: str, quiet: bool) -> Iterator[str]:
    """JSON lines of ``still eval compare``, and a sentence per benchmark on stderr."""
    a = read_run(_read_file(path_a), id_field)
    b = read_run(_read_file(path_b), id_field)
    results = compare_runs(a, b, seed, resamples)
    if not results:
        raise StillError(f"{path_a} and {path_b} share no benchmark with a summary line (are both still eval outputs?)")
    for result in results:
        if not quiet:
            lo, hi = result["ci95"]
            verdict = "distinguishable from zero" if result["distinguishable"] else "not distinguishable from zero"
            print(
                f"still eval compare: {result['benchmark']}: B - A = {100 * result['delta']:+.1f} points, "
                f"95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] over {result['n_problems']} problems: {verdict}",
                file=sys.stderr,
            )
        yield orjson.dumps(result).decode()


@dataclass(frozen=True)
class RunRequest:
    """Options of ``still eval run`` beyond the scoring ones."""

    model: str
    benches: tuple[str, ...]
    engine: str = "hf"
    k: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    greedy: bool = False
    no_thinking: bool = False
    think_prefill: bool = False
    seed: int = 0
    engine_options: tuple[tuple[str, Any], ...] = ()
    question_field: str | None = None
    answer_field: str | None = None
    resume: bool = False


def weights_fingerprint(model: str) -> dict[str, Any]:
    """Where the weights are and what they are: the index file's sha256 for a sharded model,
    and an xxh3-128 of every weight file's bytes (fast enough for multi-GB models)."""
    import hashlib

    import xxhash

    path = Path(model)
    if not path.is_dir():
        return {"model": model, "weights": "hub id (not hashed)"}
    out: dict[str, Any] = {"model": str(path.resolve())}
    for index in sorted(path.glob("*.index.json")):
        out["index_sha256"] = hashlib.sha256(index.read_bytes()).hexdigest()
    digest = xxhash.xxh3_128()
    files = _weight_files(path)
    for weights in files:
        digest.update(weights.name.encode() + b"\0")
        with weights.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    out["weights_xxh3_128"] = digest.hexdigest()
    out["weight_files"] = len(files)
    return out


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a model folder: its safetensors, else its PyTorch weight files; never
    what a trainer leaves beside them (training_args.bin pickles the output folder, so two copies
    of the same weights would fingerprint differently)."""
    files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors")
    if not files:
        files = sorted(
            p for p in path.iterdir() if p.suffix == ".bin" and p.name.startswith(("pytorch_model", "adapter_model"))
        )
    return files


def library_versions(engine: str) -> dict[str, str]:
    from importlib import metadata

    names = ["torch", "transformers"] + (["vllm"] if engine == "vllm" else [])
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def eval_requests(
    benches: list[Benchmark], k_of: Callable[[Benchmark], int], run: RunRequest
) -> Iterator[tuple[Benchmark, Problem, Any]]:
    """One generation request per (benchmark, problem, sample index), seeded per sample."""
    from still.core.engines import GenerationRequest, SamplingParams, request_seed
    from still.core.prompts import PromptStyle

    style = PromptStyle(think_prefill=run.think_prefill, no_thinking=run.no_thinking)
    base = SamplingParams()
    params = SamplingParams(
        temperature=0.0 if run.greedy else (run.temperature if run.temperature is not None else base.temperature),
        top_p=1.0 if run.greedy else (run.top_p if run.top_p is not None else base.top_p),
        max_tokens=run.max_tokens if run.max_tokens is not None else base.max_tokens,
    )
    for bench in benches:
        for problem in bench.problems:
            key = f"{bench.name}/{problem.id}"
            for i in range(k_of(bench)):
                yield (
                    bench,
                    problem,
                    GenerationRequest(
                        messages=style.from_query(problem.question),
                        prefill=style.prefill,
                        query_id=key,
                        sample_idx=i,
                        seed=request_seed(run.seed, key, i),
                        params=params,
                    ),
                )


def sample_record(bench: Benchmark, problem: Problem, request: Any, result: Any, answer_field: str) -> Record:
    """The per-sample line: the problem, the response and how it was made."""
    data: dict[str, Any] = {"benchmark": bench.name, "id": problem.id, "query": problem.question}
    if problem.answer is not None:
        data[answer_field] = problem.answer
    else:
        data["tests"] = problem.tests
        data.update(problem.extra)
    data.update(problem.splits)
    data.update(
        {
            "response": result.text,
            "model": result.model,
            "sample_idx": request.sample_idx,
            "finish_reason": result.finish_reason,
            "n_tokens": result.completion_tokens,
            "seed": request.seed,
            **request.params.as_record(),
        }
    )
    return Record(data, None, f"<eval {bench.name}>", 0)


def run_eval(run: RunRequest, request: ScoreRequest, fields: Fields, output: str | None) -> RunStats:
    """Generate k samples per problem through an engine, verify and score them, write it all.

    Per-sample lines come in (benchmark, problem, sample index) order whatever order the engine
    finished them in, so the output does not depend on batching; then the summaries.
    """
    from still.core.engines import open_engine
    from still.core.jsonl import write_records

    benches = load_benchmarks(run.benches, run.question_field, run.answer_field)
    excluded_ids = contaminated_items(request.clean_report) if request.clean_report else {}
    excluded: dict[str, int] = {}
    for bench in benches:
        hit = excluded_ids.get(bench.name, set())
        kept = [p for p in bench.problems if p.id not in hit]
        excluded[bench.name] = len(bench.problems) - len(kept)
        bench.problems = kept

    def k_of(bench: Benchmark) -> int:
        if run.k is not None:
            return run.k
        return 1 if run.greedy else bench.default_k

    stats = RunStats("eval")
    jobs = list(eval_requests(benches, k_of, run))
    where = {id(req): (bench, problem) for bench, problem, req in jobs}
    options = dict(run.engine_options)
    fingerprint = {
        "still_version": __version__,
        "mode": "run",
        **weights_fingerprint(run.model),
        "engine": run.engine,
        "engine_options": {k: v for k, v in sorted(options.items()) if k != "api_key_env"},
        "libraries": library_versions(run.engine),
        "seed": run.seed,
        "prompt": _prompt_record(run),
        "sampling_params": jobs[0][2].params.as_record() if jobs else {},
    }
    journal = _open_journal(output, run.resume, fingerprint, {b.name: b.sha256 for b in benches})
    made: dict[tuple[str, str, int], Record] = {}
    try:
        todo = [req for b, p, req in jobs if journal is None or (b.name, p.id, req.sample_idx) not in journal]
        stats.extra["samples"] = len(jobs)
        stats.extra["resumed"] = len(jobs) - len(todo)
        if todo:
            with open_engine(run.engine, run.model, **options) as engine:
                for req, result in engine.generate(todo):
                    bench, problem = where[id(req)]
                    rec = sample_record(bench, problem, req, result, run.answer_field or "answer")
                    key = (bench.name, problem.id, req.sample_idx)
                    if journal is not None:
                        journal.append(key, rec.to_bytes())
                    made[key] = rec
        records = [
            made.get(key) or _journalled(journal, key) for key in ((b.name, p.id, r.sample_idx) for b, p, r in jobs)
        ]
    except BaseException:
        if journal is not None:
            journal.close()  # kept for --resume
        raise
    stats.created += len(records)
    config = ScoreConfig(
        verify=VerifyConfig(
            fields=fields,
            answer_field=run.answer_field or "answer",
            math=MathConfig(workers=request.workers),
            sandbox=request.sandbox,
        ),
        k=None,
        seed=request.seed,
        resamples=request.resamples,
        fingerprint=fingerprint,
        checksums={b.name: b.sha256 for b in benches},
        excluded=excluded,
    )
    summaries: list[dict[str, Any]] = []

    def collect(recs: Iterable[Record]) -> Iterator[Record]:
        for rec in recs:
            if rec.data.get("eval") == "summary":
                summaries.append(rec.data)
            yield rec

    with AtomicOutput(output) as sink:
        write_records(collect(score_records(records, config, stats)), sink, stats)
    stats.check_balance()
    if journal is not None:
        journal.remove()  # the output is in place: the journal has done its job
    write_outputs(summaries, request.report_path, request.plot_path)
    return stats


def _open_journal(output: str | None, resume: bool, fingerprint: dict[str, Any], checksums: dict[str, str]) -> Any:
    """With ``-o FILE``, every sample is journalled in FILE.journal as it finishes (see
    core/journal.py); ``--resume`` continues a killed run, generating only what is missing."""
    from still.core.journal import output_journal

    def key_of(line: bytes) -> tuple[str, str, int]:
        data = orjson.loads(line)
        return (str(data["benchmark"]), str(data["id"]), int(data["sample_idx"]))

    run_id = {k: v for k, v in fingerprint.items() if k != "libraries"} | {"datasets": checksums}
    return output_journal(output, run_id, key_of, resume=resume)


def _journalled(journal: Any, key: tuple[str, str, int]) -> Record:
    line: bytes = journal.get(key)
    return Record(orjson.loads(line), None, str(journal.path), 0)


def _prompt_record(run: RunRequest) -> dict[str, Any]:
    from still.core.prompts import PromptStyle

    record: dict[str, Any] = PromptStyle(think_prefill=run.think_prefill, no_thinking=run.no_thinking).as_record()
    return record
