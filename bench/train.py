"""Benchmark: `still distill-train --objective sft` against TRL's SFTTrainer on the same data and model.

A tiny random Llama (2 layers, hidden 128, vocabulary resized to 32,768) and generated JSONL of
1k-4k-token reasoning traces (query/response). Both run one epoch on CPU with the same threads,
learning rate, schedule, AdamW β2 and seed, each in its own process: still with its default
packing (rows of --max-length, padding-free, per-example attention, chunked CE on supervised
positions only), TRL with its default packing (BFD, padding-free position_ids) and completion-only
loss from prompt/completion columns. Printed: supervised tokens/s of each (supervised tokens over
the Trainer's train_runtime), the ratio, and the mean loss over the first and last quarter of each
loss curve. On a shared box wall time swings with other jobs; supervised tokens per CPU second
(both processes use the same threads) are steadier.

    python bench/train.py                      # 24 traces, 2 threads
    python bench/train.py --traces 64 --threads 4

TRL is not a dependency of still; install it in your venv for this script only:
    .venv/bin/pip install trl==1.16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 32768
WORDS = (
    "the a of to and is in what find how many sum product number answer reason step by put your final "
    "within so we get total each first then add carry digit sort list multiply result value write"
).split()


def build_model(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_model
    from transformers import AutoModelForCausalLM

    build_tiny_model(out, seed=0, layers=2, hidden=128, heads=2)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.resize_token_embeddings(VOCAB)
    model.save_pretrained(out)


def generate(path: Path, traces: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(traces):
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            n = rng.randint(800, 2800)  # words: 1k-4k tokens with the tiny BPE (numbers take two)
            steps = " ".join(rng.choice(WORDS) if rng.random() < 0.8 else str(rng.randint(0, 99)) for _ in range(n))
            response = f"<think>\n{steps}\n</think>\nThe answer is \\boxed{{{a + b}}}."
            f.write(json.dumps({"id": f"q{i}", "query": f"What is {a} + {b}?", "response": response}) + "\n")


def run_still(model: str, data: str, args: argparse.Namespace) -> dict[str, Any]:
    from still.core.jsonl import read_records
    from still.core.stats import RunStats
    from still.core.train import TrainConfig, train

    losses: list[float] = []

    def keep(line: bytes) -> None:
        losses.append(json.loads(line)["loss"])

    stats = RunStats("distill-train")
    config = TrainConfig(
        model=model,
        out=str(Path(args.work) / "still-out"),
        lr=args.lr,
        epochs=1,
        max_length=args.max_length,
        log_steps=1,
        seed=0,
        scheduler="cosine",
        warmup=0.1,
        truncate="truncate",  # as TRL's BFD packing does with overflow
    )
    cpu = time.process_time()
    summary = train(read_records([data], stats), config, stats, keep)
    cpu = time.process_time() - cpu  # includes loading, tokenizing and saving: conservative for still
    return {
        "runtime": summary["train_runtime"],
        "cpu": cpu,
        "supervised": summary["supervised_tokens"],
        "losses": losses,
    }


def run_trl(model: str, data: str, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in open(data, encoding="utf-8")]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["query"]}],
                "completion": [{"role": "assistant", "content": r["response"]}],
            }
            for r in rows
        ]
    )
    config = SFTConfig(
        output_dir=str(Path(args.work) / "trl-out"),
        max_length=args.max_length,
        packing=True,
        per_device_train_batch_size=1,
        learning_rate=args.lr,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        adam_beta2=0.95,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        bf16=False,
        dataloader_pin_memory=False,
    )
    tok = AutoTokenizer.from_pretrained(model)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model), args=config, train_dataset=dataset, processing_class=tok
    )
    supervised = 0
    for batch in trainer.get_train_dataloader():
        labels = batch.get("shift_labels", batch["labels"][..., 1:])
        supervised += int((labels != -100).sum())
    cpu = time.process_time()
    out = trainer.train()
    cpu = time.process_time() - cpu
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"runtime": out.metrics["train_runtime"], "cpu": cpu, "supervised": supervised, "losses": losses}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = (run_still if args.child == "still" else run_trl)(args.model, args.data, args)
    print("RESULT " + json.dumps(result))


def quarters(losses: list[float]) -> tuple[float, float]:
    k = max(1, len(losses) // 4)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["still", "trl"])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="still-bench-train-") as work:
        model, data = Path(work) / "model", Path(work) / "traces.jsonl"
        build_model(model)
        generate(data, args.traces, args.seed)
        results = {}
        for name in ("still", "trl"):
            cmd = [sys.executable, __file__, "--child", name, "--model", str(model), "--data", str(data)]
            cmd += ["--work", work, "--threads", str(args.threads), "--max-length", str(args.max_length)]
            cmd += ["--lr", str(args.lr)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(line[-1][7:])
    print(f"traces {args.traces}, max_length {args.max_length}, threads {args.threads}, vocab {VOCAB}")
    rates, cpu_rates = {}, {}
    for name, r in results.items():
        rates[name] = r["supervised"] / r["runtime"]
        cpu_rates[name] = r["supervised"] / r["cpu"]
        first, last = quarters(r["losses"])
        print(
            f"{name:6s} supervised tokens {r['supervised']:8d}  train {r['runtime']:7.1f} s "
            f"(CPU {r['cpu']:7.1f} s)  {rates[name]:8.0f} supervised tok/s ({cpu_rates[name]:6.0f} per CPU s)  "
            f"steps {len(r['losses'])}  loss first/last quarter {first:.4f} / {last:.4f}"
        )
    s_first, s_last = quarters(results["still"]["losses"])
    t_first, t_last = quarters(results["trl"]["losses"])
    print(
        f"speed still/trl: {rates['still'] / rates['trl']:.2f}x wall, "
        f"{cpu_rates['still'] / cpu_rates['trl']:.2f}x CPU time"
    )
    last_diff = abs(s_last - t_last) / t_last * 100
    first_diff = abs(s_first - t_first) / t_first * 100
    print(f"loss difference, last quarter: {last_diff:.2f}% (first quarter {first_diff:.2f}%)")


if __name__ == "__main__":
    main()
