"""``still merge``: average fine-tuned models of one base into one model (mergekit's methods)."""

from __future__ import annotations

import sys
from typing import Any

import click

METHOD_NAMES = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "model_stock", "arcee_fusion")
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


@click.command("merge")
@click.argument("models", nargs=-1, type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(METHOD_NAMES), help="Merge method (required unless --spec).")
@click.option("--base", type=click.Path(file_okay=False), help="Base model (task vectors are taken from it).")
@click.option("-o", "--out", required=True, type=click.Path(), help="Output model directory (appears when done).")
@click.option("--spec", type=click.Path(dir_okay=False, exists=True), help="YAML/JSON spec of a multi-stage merge.")
@click.option("--weight", type=float, multiple=True, help="Weight, once per model in order (or once for all).")
@click.option("--density", type=float, multiple=True, help="Fraction of each task vector kept (ties, dare_*).")
@click.option("--lambda", "lam", type=float, default=1.0, show_default=True, help="Scale of the merged task vector.")
@click.option("--t", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="slerp: 0 = base, 1 = model.")
@click.option("--normalize/--no-normalize", default=None, help="Divide by the weight sum [default: linear, ties].")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), help="Compute dtype [default: the inputs' dtype].")
@click.option("--out-dtype", type=click.Choice(DTYPE_NAMES), help="Output dtype [default: the compute dtype].")
@click.option("--seed", type=int, help="Seed of DARE's masks and Arcee Fusion's samples [default: 0, or the spec's].")
@click.option(
    "--tokenizer-policy",
    type=click.Choice(["refuse", "base"]),
    default="refuse",
    show_default=True,
    help="Tokenizers that map tokens to different ids: refuse, or keep the base's and merge rows by id.",
)
@click.option(
    "--ties-selection",
    type=click.Choice(["sort", "select"]),
    default="sort",
    show_default=True,
    help="ties: sort = mergekit's exact choice among equal magnitudes (18 B/element scratch on bf16); "
    "select = within the memory bound, lowest index first among equal magnitudes at the threshold.",
)
@click.option("--max-shard-size", default="512MB", show_default=True, help="Output shard size (KB/MB/GB/MiB/GiB).")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors.")
@click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks on errors.")
def command(models: tuple[str, ...], method: str | None, spec: str | None, out: str, force: bool, quiet: bool,
            **options: Any) -> None:  # fmt: skip
    """Merge models fine-tuned from one base, tensor by tensor, into --out.

    Methods as mergekit 0.1.5 computes them (bit-identical at the same seed; slerp within 1 ulp):
    linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, model_stock, arcee_fusion.
    Refuses (exit 3, nothing written) models with different vocabularies, tokenizers, tensor names
    or shapes, duplicate inputs, missing or corrupt shards. Prints one JSON line describing the
    result (inputs and output shards with sha256) on stdout.

    \b
    Examples:
      still merge --method linear --weight 2 --weight 1 math/ code/ -o merged/
      still merge --method ties --base base/ --density 0.5 math/ code/ -o merged/
      still merge --spec tinyr1.yaml -o merged/
    """
    import importlib.util

    import orjson

    from still.core.errors import MissingExtra, UsageError

    if importlib.util.find_spec("torch") is None:  # found, not imported: refusals stay fast
        raise MissingExtra("torch", "models", "still merge")
    from still.core.merge import MergePlan, merge, progress_printer
    from still.core.merge_spec import parse_size, run_spec

    shard_bytes = parse_size(options.pop("max_shard_size"))
    show = (lambda label: progress_printer(f"still merge {label}")) if not quiet else None
    if spec:
        unset: dict[str, Any] = {"base": None, "weight": (), "density": (), "normalize": None, "lam": 1.0, "t": 0.5}
        given = [k for k, default in unset.items() if options[k] != default]
        if method or models or given:
            raise UsageError(
                "--spec names the models, methods and their parameters: give no MODELS, --method, --base, "
                "--weight, --density, --lambda, --t or --normalize with it"
            )
        overrides = {k: options[k] for k in ("dtype", "out_dtype", "seed") if options[k] is not None}
        manifest = run_spec(spec, out, force=force, overrides=overrides, progress=show)
    else:
        if not method:
            raise UsageError("give --method (or --spec)")
        plan = MergePlan(
            method=method,
            models=list(models),
            base=options["base"],
            weights=options["weight"],
            densities=options["density"],
            lam=options["lam"],
            t=options["t"],
            normalize=options["normalize"],
            dtype=options["dtype"],
            out_dtype=options["out_dtype"],
            seed=0 if options["seed"] is None else options["seed"],
            tokenizer_policy=options["tokenizer_policy"],
            max_shard_bytes=shard_bytes,
            ties_selection=options["ties_selection"],
        )
        manifest = merge(plan, out, force=force, progress=show("") if show else None)
    sys.stdout.buffer.write(orjson.dumps(manifest) + b"\n")
    if not quiet:
        n = len(manifest["shards"])
        click.echo(
            f"still merge: {manifest['method']}, {manifest['tensors']} tensors into {n} shard(s) at {out} "
            f"in {manifest['seconds']:.2f} s",
            err=True,
        )
