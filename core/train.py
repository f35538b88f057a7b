"""``still distill-train``: the transformers Trainer wired to still's data, batches and losses.

The Trainer brings what users scale with: ``torchrun``/``accelerate launch`` with DDP, FSDP or
DeepSpeed, bf16, gradient checkpointing, checkpoints and resume. still brings the data (chat
template masks, packing), padding-free micro-batches and losses that never hold full-vocabulary
logits for a whole sequence, normalised by the supervised tokens (or REDI pairs) of the whole
optimizer step across accumulation steps and devices.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import torch

from still.core.errors import StillError, UsageError
from still.core.fields import Fields
from still.core.jsonl import Record
from still.core.stats import RunStats
from still.core.train_batches import Collator, RowDataset, pair_rows, sft_rows
from still.core.train_data import ChatMasker, Example, LengthPolicy, encode_records, redi_pairs
from still.core.train_losses import KD_LOSSES, chunked_kd, weighted_ce
from still.core.train_model import HiddenCapture, apply_lora, base_model, load_causal_lm, load_tokenizer

OBJECTIVES = ("sft", "kd", "redi")
SCHEDULERS = ("cosine", "constant_with_warmup", "linear", "constant")


@dataclass
class TrainConfig:
    model: str
    out: str | None
    objective: str = "sft"
    # data
    fields: Fields = field(default_factory=Fields)
    chat_template: str | None = None
    max_length: int = 4096
    truncate: str = "drop"
    pack: bool = True
    verdict_field: str = "verify.verdict"
    # knobs (defaults and their sources: docs/distill-train.md)
    epochs: float = 3.0
    max_steps: int = -1
    lr: float = 1e-5
    batch_size: int = 1
    grad_accum: int = 1
    warmup: float = 0.03
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"  # the Trainer's own default; ~5x faster steps than the for-loop AdamW on CPU
    save_steps: int = 0
    save_total_limit: int = 2
    log_steps: int = 10
    checkpoint_dir: str | None = None
    resume: bool = False
    seed: int = 0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    attn: str = "auto"
    loss_chunk: int = 1024
    # LoRA (0: full fine-tuning)
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    # kd
    teacher: str | None = None
    teacher_logits: str | None = None
    kd_loss: str = "fkl"
    kd_ratio: float = 0.5
    beta: float = 0.5
    skew_alpha: float = 0.1
    temperature: float = 1.0
    # redi
    redi_alpha: float = 0.8
    # --dump-teacher-logits
    dump_path: str | None = None
    top_k: int = 0
    samples: int = 12

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if self.kd_loss not in KD_LOSSES:
            raise UsageError(f"--kd-loss must be one of {', '.join(KD_LOSSES)}")
        if self.dump_path is None and not self.out:
            raise UsageError("--out DIR is required (where the trained model goes)")
        if self.objective == "kd" and self.dump_path is None:
            if (self.teacher is None) == (self.teacher_logits is None):
                raise UsageError("--objective kd needs exactly one of --teacher DIR or --teacher-logits FILE")
            if self.teacher_logits is not None and self.kd_loss != "fkl":
                raise UsageError("cached sparse teacher logits support --kd-loss fkl only (the others need all of p)")
        elif self.teacher is not None or self.teacher_logits is not None:
            raise UsageError("--teacher and --teacher-logits only make sense with --objective kd")
        if not 0.0 <= self.kd_ratio <= 1.0 or not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.skew_alpha <= 1.0:
            raise UsageError("--kd-ratio, --beta and --skew-alpha must lie in [0, 1]")
        if self.resume and self.save_steps <= 0:
            raise UsageError("--resume needs checkpoints: give --save-steps N (also on the run being resumed)")

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_dir or f"{(self.out or 'distill-train').rstrip('/')}.checkpoints"


class Meter:
    """Tokens seen since the last log line, for tokens/s, and the run's supervised-token total."""

    def __init__(self) -> None:
        self.tokens = 0
        self.supervised = 0
        self.since = time.perf_counter()

    def take_rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.tokens, self.since = 0, now
        return rate


def _metrics_callback(meter: Meter, write: Callable[[bytes], Any]) -> Any:
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        """One JSON line per logging step on stdout; a step counter on stderr when it is a TTY."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            line = {
                "step": state.global_step,
                "loss": round(float(logs["loss"]), 6),
                "lr": float(logs.get("learning_rate", 0.0)),
                "tokens_per_s": round(meter.take_rate(), 1),
                "supervised_tokens": meter.supervised,
                "epoch": round(float(state.epoch or 0.0), 4),
            }
            write(orjson.dumps(line) + b"\n")

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero and sys.stderr.isatty():
                sys.stderr.write(f"\rstill distill-train: step {state.global_step}/{state.max_steps}")
                sys.stderr.flush()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero and sys.stderr.isatty():
                sys.stderr.write("\r\033[K")

    return Metrics()


def _trainer_class() -> Any:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """compute_loss returns the step-normalised loss of one micro-batch (see train_batches)."""

        loss_is_scaled_for_ga = True

        def setup_still(
            self, config: TrainConfig, meter: Meter, teacher: Any = None, teacher_capture: Any = None
        ) -> None:
            self.still = config
            self.meter = meter
            self.capture = HiddenCapture(self.model)
            self.teacher = teacher
            self.teacher_capture = teacher_capture
            self.flops_per_token = 6 * base_model(self.model).num_parameters(exclude_embeddings=True)

        def floating_point_ops(self, inputs: dict[str, Any]) -> int:
            # The Trainer's own estimate, without walking every parameter again at each micro-batch.
            return int(self.flops_per_token * inputs["input_ids"].numel())

        def _get_num_items_in_batch(self, batch_samples: list[Any], device: torch.device) -> torch.Tensor:
            # The divisor of a whole optimizer step: supervised tokens (sft, kd) or pairs (redi) of all
            # its micro-batches, summed across data-parallel ranks.
            units = sum(b["loss_units"] for b in batch_samples).to(device)
            if self.args.world_size > 1:
                units = self.accelerator.gather(units.reshape(1)).sum()
            clamped: torch.Tensor = units.clamp(min=1.0)
            return clamped

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            config = self.still
            hidden = self.capture(model, inputs)
            targets = inputs["shift_labels"]
            where = targets != -100
            h, y = hidden[where], targets[where]
            weights = inputs["loss_weights"][where]
            units = num_items_in_batch if num_items_in_batch is not None else inputs["loss_units"].clamp(min=1.0)
            head = self.capture.head_weight
            self.meter.tokens += int(targets.numel())
            self.meter.supervised += int(where.sum())
            if config.objective != "kd":
                loss = weighted_ce(h, head, y, weights / units, config.loss_chunk)
            else:
                teacher_chunk = self._teacher_chunks(inputs, where)
                loss, _ = chunked_kd(
                    h,
                    head,
                    y,
                    weights * (1.0 - config.kd_ratio) / units,
                    weights * config.kd_ratio / units,
                    teacher_chunk,
                    kind=config.kd_loss,
                    beta=config.beta,
                    skew_alpha=config.skew_alpha,
                    temperature=config.temperature,
                    chunk=config.loss_chunk,
                )
            if self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages gradients; the divisor is already global
            return loss

        def _teacher_chunks(self, inputs: dict[str, Any], where: torch.Tensor) -> Any:
            if self.teacher is None:
                ids, weights = inputs["teacher_ids"], inputs["teacher_weights"]
                return lambda a, b: ("sparse", (ids[a:b], weights[a:b]))
            with torch.no_grad():
                t_hidden = self.teacher_capture(self.teacher, inputs)[where]
            t_head = self.teacher_capture.head_weight

            def dense(a: int, b: int) -> tuple[str, tuple[torch.Tensor, ...]]:
                with torch.no_grad():
                    return "dense", (t_hidden[a:b].to(t_head.dtype) @ t_head.t(),)

            return dense

    return DistillTrainer


def _training_arguments(config: TrainConfig, bf16: bool) -> Any:
    from transformers import TrainingArguments

    warmup_steps: int | float = int(config.warmup) if config.warmup >= 1 else config.warmup
    extra: dict[str, Any] = {"activation_checkpointing": True} if config.gradient_checkpointing else {}
    if bf16 and not torch.cuda.is_available():
        extra["use_cpu"] = True  # bf16 autocast on the CPU; without it the Trainer refuses bf16 off a GPU
    return TrainingArguments(
        **extra,
        output_dir=config.checkpoints,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        warmup_steps=warmup_steps,
        lr_scheduler_type=config.scheduler,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        optim=config.optim,
        max_grad_norm=config.max_grad_norm,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=max(config.save_steps, 1),
        save_total_limit=config.save_total_limit,
        logging_steps=config.log_steps,
        logging_first_step=False,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,
    )


def _precision(choice: str) -> bool:
    if choice == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return choice == "bf16"


def load_examples(
    records: Iterable[Record], config: TrainConfig, tokenizer: Any, stats: RunStats
) -> tuple[list[Example], Any]:
    """Tokenized examples and the rows the sampler shuffles."""
    if config.chat_template is not None:
        try:
            with open(config.chat_template, encoding="utf-8") as f:
                tokenizer.chat_template = f.read()  # saved with the model: it was trained with it
        except OSError as exc:
            raise UsageError(f"cannot read --chat-template {config.chat_template}: {exc.strerror}") from exc
    masker = ChatMasker(tokenizer)
    policy = LengthPolicy(config.max_length, config.truncate)
    if config.objective == "redi":
        examples, rows = pair_rows(redi_pairs(records, masker, config.fields, policy, stats, config.verdict_field))
        if not rows:
            raise StillError("no positive/negative pairs to train on (redi needs both verdicts per id)")
        return examples, rows
    examples = list(encode_records(records, masker, config.fields, policy, stats))
    if not examples:
        raise StillError("no training examples left (all rows dropped; see the summary)")
    return examples, sft_rows(examples, config.max_length, config.pack, config.seed)


def _replace_dir(tmp: str, out: str) -> None:
    """Move the finished model into place; an existing directory is replaced only now."""
    old = None
    if os.path.exists(out):
        old = f"{out}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train(
    records: Iterable[Record],
    config: TrainConfig,
    stats: RunStats,
    write_metrics: Callable[[bytes], Any],
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train and save the model to ``config.out`` (or dump teacher logits); returns a summary."""
    from transformers import set_seed

    config.validate()
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    examples, rows = load_examples(records, config, tokenizer, stats)
    stats.extra["examples"] = len(examples)
    stats.extra["rows"] = len(rows)
    if config.dump_path is not None:
        return _dump(config, examples, stats)

    bf16 = _precision(config.precision)
    model = load_causal_lm(config.model, config.attn)
    if config.gradient_checkpointing:
        model.config.use_cache = False
    if config.lora_r > 0:
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets)
    teacher = teacher_capture = cache = None
    if config.objective == "kd" and config.teacher is not None:
        teacher = load_causal_lm(config.teacher, config.attn, torch.bfloat16 if bf16 else None)
        teacher.eval().requires_grad_(False)
        teacher_capture = HiddenCapture(teacher)
    if config.objective == "kd" and config.teacher_logits is not None:
        from still.core.train_teacher_cache import TeacherCache

        cache = TeacherCache(config.teacher_logits, examples)

    meter = Meter()
    trainer = _trainer_class()(
        model=model,
        args=_training_arguments(config, bf16),
        train_dataset=RowDataset(rows),
        data_collator=Collator(examples, config.redi_alpha, cache),
        processing_class=tokenizer,
        callbacks=[_metrics_callback(meter, write_metrics), *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # it prints log dicts on stdout, where only data goes
    trainer.remove_callback(ProgressCallback)
    if teacher is not None:
        teacher.to(trainer.args.device)
    trainer.setup_still(config, meter, teacher, teacher_capture)
    try:
        result = trainer.train(resume_from_checkpoint=True if config.resume else None)
    except ValueError as exc:
        if config.resume and "checkpoint" in str(exc).lower():
            raise UsageError(f"--resume: no checkpoint in {config.checkpoints} ({exc})") from exc
        raise
    _save(trainer, tokenizer, config)
    summary = {
        "steps": int(result.global_step),
        "train_loss": round(float(result.training_loss), 6),
        "supervised_tokens": meter.supervised,
        "train_runtime": round(float(result.metrics.get("train_runtime", 0.0)), 3),
        "out": config.out,
    }
    stats.extra.update(summary)
    return summary


def _save(trainer: Any, tokenizer: Any, config: TrainConfig) -> None:
    assert config.out is not None
    out = os.path.abspath(config.out)
    tmp = f"{out}.tmp-{os.getpid()}"
    model = trainer.model
    if config.lora_r > 0 and trainer.is_world_process_zero():
        model = model.merge_and_unload()  # a plain model directory, loadable without peft
        model.save_pretrained(tmp)
    else:
        trainer.save_model(tmp)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, out)


def _dump(config: TrainConfig, examples: list[Example], stats: RunStats) -> dict[str, Any]:
    from still.core.train_teacher_cache import dump_teacher_logits

    assert config.dump_path is not None
    model = load_causal_lm(config.model, config.attn)
    if torch.cuda.is_available():
        model.to("cuda")
    positions = dump_teacher_logits(
        model,
        HiddenCapture(model),
        examples,
        config.dump_path,
        top_k=config.top_k,
        samples=config.samples,
        temperature=config.temperature,
        seed=config.seed,
        chunk=config.loss_chunk,
    )
    summary = {"positions": positions, "teacher_logits": config.dump_path}
    stats.extra.update(summary)
    return summary
