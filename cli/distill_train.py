"""``still distill-train``: SFT, logit KD and REDI on JSONL traces; writes a Hugging Face model directory."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from still.cli._common import StreamOptions, finish

_OBJECTIVES = ("sft", "kd", "redi")
_KD_LOSSES = ("fkl", "rkl", "skew-fkl", "skew-rkl", "jsd")
_SCHEDULERS = ("cosine", "constant_with_warmup", "linear", "constant")
_ATTN = ("auto", "varlen", "sdpa", "eager", "flash_attention_2")


def _opt(*names: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if "default" in kw and "show_default" not in kw and not kw.get("is_flag"):
        kw["show_default"] = True
    return click.option(*names, **kw)


@click.command("distill-train")
@click.argument("inputs", nargs=-1, type=click.Path(allow_dash=True, dir_okay=False))
@_opt("--model", required=True, metavar="DIR", help="Student model directory (Hugging Face format).")
@_opt("--out", metavar="DIR", help="Where the trained model goes (written whole at the end; replaces DIR).")
@_opt("--objective", type=click.Choice(_OBJECTIVES), default="sft", help="Training objective.")
@_opt("--chat-template", metavar="FILE", help="Jinja chat template to use instead of the tokenizer's.")
@_opt("--max-length", type=click.IntRange(min=8), default=4096, help="Tokens per example (and per packed row).")
@_opt("--truncate", type=click.Choice(["drop", "truncate"]), default="drop", help="Longer examples: drop or cut.")
@_opt("--pack/--no-pack", default=True, help="Pack examples into rows of --max-length (no cross-attention).")
@_opt("--epochs", type=click.FloatRange(min=0.0), default=3.0, help="Passes over the data.")
@_opt("--max-steps", type=int, default=-1, help="Stop after this many optimizer steps (overrides --epochs).")
@_opt("--lr", type=click.FloatRange(min=0.0), default=1e-5, help="Peak learning rate (5e-5 for base/instruct).")
@_opt("--batch-size", type=click.IntRange(min=1), default=1, help="Rows (packed bins or REDI pairs) per micro-batch.")
@_opt("--grad-accum", type=click.IntRange(min=1), default=1, help="Micro-batches per optimizer step.")
@_opt("--warmup", type=click.FloatRange(min=0.0), default=0.03, help="Warmup: a fraction of steps (<1) or steps.")
@_opt("--scheduler", type=click.Choice(_SCHEDULERS), default="cosine", help="Learning-rate schedule.")
@_opt("--weight-decay", type=click.FloatRange(min=0.0), default=0.0, help="AdamW weight decay.")
@_opt("--adam-beta2", type=click.FloatRange(0.0, 1.0), default=0.95, help="AdamW β2.")
@_opt("--max-grad-norm", type=click.FloatRange(min=0.0), default=1.0, help="Gradient clipping.")
@_opt("--save-steps", type=click.IntRange(min=0), default=0, help="Checkpoint every N steps (0: none).")
@_opt("--checkpoint-dir", metavar="DIR", help="Checkpoints [default: OUT.checkpoints].")
@_opt("--resume", is_flag=True, help="Continue from the last checkpoint in --checkpoint-dir.")
@_opt("--log-steps", type=click.IntRange(min=1), default=10, help="A metrics line every N steps.")
@_opt("--seed", type=int, default=0, help="Seed for weights init of adapters, data order, packing, sampling.")
@_opt("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", help="auto: bf16 on GPUs with it.")
@_opt("--gradient-checkpointing", is_flag=True, help="Recompute activations in the backward pass (less memory).")
@_opt("--attn", type=click.Choice(_ATTN), default="auto", help="Attention (auto: flash_attention_2, else varlen).")
@_opt("--loss-chunk", type=click.IntRange(min=1), default=1024, help="Positions per chunk of LM-head logits.")
@_opt("--lora-r", type=click.IntRange(min=0), default=0, help="LoRA rank (0: full fine-tuning; needs peft).")
@_opt("--lora-alpha", type=click.IntRange(min=1), default=32, help="LoRA alpha.")
@_opt("--lora-dropout", type=click.FloatRange(0.0, 1.0), default=0.05, help="LoRA dropout.")
@_opt("--lora-targets", default="all-linear", help="LoRA target modules (comma-separated names or all-linear).")
@_opt("--teacher", metavar="DIR", help="kd: teacher model loaded alongside (same tokenizer).")
@_opt("--teacher-logits", metavar="FILE", help="kd: sparse teacher targets written by --dump-teacher-logits.")
@_opt("--kd-loss", type=click.Choice(_KD_LOSSES), default="fkl", help="kd: divergence (docs/distill-train.md).")
@_opt("--kd-ratio", type=click.FloatRange(0.0, 1.0), default=0.5, help="kd: loss = (1-r)·CE + r·T²·KD.")
@_opt("--beta", type=click.FloatRange(0.0, 1.0), default=0.5, help="kd: JSD mixture weight of the teacher.")
@_opt("--skew-alpha", type=click.FloatRange(0.0, 1.0), default=0.1, help="kd: skew of skew-fkl/skew-rkl.")
@_opt("--temperature", type=click.FloatRange(min=1e-3), default=1.0, help="kd: logits are divided by T.")
@_opt("--redi-alpha", type=click.FloatRange(min=0.0), default=0.8, help="redi: weight of the negative term.")
@_opt("--verdict-field", default="verify.verdict", metavar="PATH", help="redi: where the verify verdict is.")
@_opt(
    "--dump-teacher-logits",
    "dump_path",
    metavar="FILE",
    help="Run --model as the teacher over the inputs and write sparse targets to FILE (no training).",
)
@_opt("--top-k", type=click.IntRange(min=0), default=0, help="dump: exact top-k teacher tokens per position.")
@_opt("--samples", type=click.IntRange(min=0), default=12, help="dump: tokens sampled from the rest (unbiased).")
@_opt("--query-field", metavar="PATH", help="Dotted path of the query [default: query, else messages].")
@_opt("--response-field", metavar="PATH", help="Dotted path of the response [default: response, else messages].")
@_opt("--id-field", default="id", metavar="PATH", help="Field holding the query id (redi groups by it).")
@_opt("--on-error", default="fail", metavar="fail|skip|quarantine=FILE", help="What to do with a malformed line.")
@_opt("--stats", "stats_path", metavar="FILE", help="Write the run summary here as JSON.")
@_opt("--max-line-mb", type=click.FloatRange(min=0.001), default=64.0, help="Reject longer input lines (MiB).")
@_opt("-q", "--quiet", is_flag=True, help="Print nothing on stderr but errors.")
@_opt("--debug", is_flag=True, expose_value=False, help="Show tracebacks on errors.")
def command(
    inputs: tuple[str, ...],
    query_field: str | None,
    response_field: str | None,
    id_field: str,
    on_error: str,
    stats_path: str | None,
    max_line_mb: float,
    quiet: bool,
    **options: Any,
) -> int:
    """Train a student on JSONL traces: sft, kd (logit distillation) or redi.

    Reads the output of `still sample` as it is (query/response or chat messages), applies the
    model's chat template so that every assistant token and end-of-turn token is supervised and
    nothing else is, packs examples without cross-attention, and writes a Hugging Face model
    directory to --out. Metrics go to stdout as JSON lines (step, loss, lr, tokens_per_s,
    supervised_tokens, epoch); the run summary to stderr. Multi-GPU: launch the same command with
    torchrun or accelerate launch (docs/distill-train.md).

    \b
    Examples:
      still distill-train --model student/ --out trained/ sample.jsonl
      still distill-train --model student/ --out kd/ --objective kd --teacher teacher/ --kd-loss jsd data.jsonl
      still distill-train --model teacher/ --dump-teacher-logits t.safetensors data.jsonl
      still distill-train --model student/ --out kd/ --objective kd --teacher-logits t.safetensors data.jsonl
      still distill-train --model sft/ --out redi/ --objective redi --lr 1e-6 verified.jsonl
    """
    from still.core.errors import require
    from still.core.fields import Fields
    from still.core.jsonl import ErrorPolicy, read_records
    from still.core.stats import RunStats

    require("transformers", "models", "distill-train")
    from still.core.train import TrainConfig, train

    stream = StreamOptions(
        inputs, None, on_error, stats_path, quiet, query_field, response_field, id_field, None, max_line_mb, 1
    )
    config = TrainConfig(
        fields=Fields(query_path=query_field, response_path=response_field, id_path=id_field), **options
    )
    stats = RunStats("distill-train")
    records = read_records(inputs or ("-",), stats, ErrorPolicy.parse(on_error), int(max_line_mb * 1024 * 1024))

    def write(line: bytes) -> None:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()

    train(records, config, stats, write)
    stats.check_balance()
    finish(stats, stream)
    return 0
