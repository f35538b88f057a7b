"""Benchmark: `still merge` against `mergekit-yaml` (0.1.5, its own venv) on the same random models.

Writes three random Llama-shaped models in bf16 (Qwen2.5-0.5B's dimensions: vocab 151936, hidden
896, MLP 4864, 2 KV heads, tied embeddings; the layer count scales with --params), the second and
third a small perturbation of the first, as fine-tunes of one base are. Then merges them linearly
(all three) and with TIES (the first as base, density 0.5; ``ties-select`` is still's memory-bounded
``--ties-selection select`` against the same mergekit run) by both tools, each as a fresh process:
wall time, CPU time, peak RSS (getrusage of a wrapper), and the memory bound
(inputs + 3) × largest tensor + output shard buffer. Outputs are compared tensor by tensor.

    python bench/merge.py                 # about 0.5B parameters per model (3 GB of bf16 weights)
    python bench/merge.py --params 100M   # quicker, on a shared box

mergekit is installed from PyPI into build/mergekit-venv the first time (tests/mergekit_env.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import mergekit_env  # noqa: E402
from sample import WRAPPER  # noqa: E402  (bench/sample.py: time and peak RSS of one fresh process)

VOCAB, HIDDEN, MLP, HEADS, KV_HEADS = 151936, 896, 4864, 14, 2


def parse_params(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "B": 10**9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def shapes(params: int) -> tuple[dict[str, tuple[int, ...]], int, int]:
    """Llama tensor shapes with ~``params`` parameters: Qwen2.5-0.5B's widths, the layer count scaled."""
    head = HIDDEN // HEADS
    layer = {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.k_proj.weight": (KV_HEADS * head, HIDDEN),
        "self_attn.v_proj.weight": (KV_HEADS * head, HIDDEN),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (MLP, HIDDEN),
        "mlp.up_proj.weight": (MLP, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, MLP),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }
    per_layer = sum(_numel(s) for s in layer.values())
    vocab = VOCAB
    layers = max(1, round((params - vocab * HIDDEN) / per_layer))
    if params < vocab * HIDDEN + per_layer:  # small runs: shrink the vocabulary too
        vocab = max(1024, (params - per_layer) // HIDDEN)
    out = {"model.embed_tokens.weight": (vocab, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(layers):
        out.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    return out, vocab, layers


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_models(work: Path, params: int) -> tuple[list[Path], int, int]:
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models

    tensor_shapes, vocab, layers = shapes(params)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": HIDDEN,
        "intermediate_size": MLP, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
    }  # fmt: skip
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    paths = [work / f"model{i}" for i in range(3)]
    gen = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in tensor_shapes.items()}
    for i, path in enumerate(paths):
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        tok.save(str(path / "tokenizer.json"))
        tensors = (
            base
            if i == 0
            else {n: t + (torch.randn(t.shape, generator=gen) * 0.002).to(t.dtype) for n, t in base.items()}
        )
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        del tensors
    largest = max(_numel(s) for s in tensor_shapes.values()) * 2
    return paths, sum(_numel(s) for s in tensor_shapes.values()), largest


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, cpu s, peak RSS MB) of one fresh process."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True)
    rc, wall, cpu, rss = proc.stdout.split()
    if rc != "0":
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}")
    return float(wall), float(cpu), int(rss) / 1024


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors import safe_open

    def tensors(d: Path) -> dict[str, Path]:
        out = {}
        for f in d.glob("*.safetensors"):
            with safe_open(str(f), "pt") as fh:
                out.update(dict.fromkeys(fh.keys(), f))
        return out

    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return False
    for name in ta:
        with safe_open(str(ta[name]), "pt") as fa, safe_open(str(tb[name]), "pt") as fb:
            if not torch.equal(fa.get_tensor(name), fb.get_tensor(name)):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="500M", help="parameters per model (500M, 100M, ...)")
    parser.add_argument("--work", default=str(ROOT / "build" / "bench-merge"), help="scratch directory")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and method (the fastest is kept)")
    parser.add_argument("--methods", default="linear,ties,ties-select", help="comma list of linear, ties, ties-select")
    args = parser.parse_args()
    mk_python, why = mergekit_env.ensure()
    if mk_python is None:
        raise SystemExit(f"mergekit unavailable: {why}")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths, numel, largest = write_models(work, parse_params(args.params))
    shard_buffer = 512 * 10**6
    print(f"3 models of {numel / 1e6:.0f}M parameters (bf16, {numel * 2 / 1e9:.2f} GB each); largest tensor "
          f"{largest / 1e6:.0f} MB; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    still = [str(Path(sys.executable).parent / "still"), "merge", "-q"]
    mergekit = str(mk_python.parent / "mergekit-yaml")
    jobs = {
        "linear": (
            ["--method", "linear", *map(str, paths)],
            mergekit_env.config("linear", None, paths, {}, {"weight": [1.0, 1.0, 1.0]}),
        ),
        "ties": (
            ["--method", "ties", "--base", str(paths[0]), "--density", "0.5", str(paths[1]), str(paths[2])],
            mergekit_env.config("ties", paths[0], paths[1:], {}, {"density": [0.5, 0.5], "weight": [1.0, 1.0]}),
        ),
    }
    # the memory-bounded TIES (radix select; lowest index first among equal magnitudes at the threshold)
    jobs["ties-select"] = ([*jobs["ties"][0], "--ties-selection", "select"], jobs["ties"][1])
    results_by_method: dict[str, dict[str, tuple[float, float, float]]] = {}
    print(f"{'method':11} {'tool':9} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12}  bound MB  same output")
    for method in args.methods.split(","):
        still_args, mk_cfg = jobs[method]
        n_inputs = 3
        bound = ((n_inputs + 3) * largest + shard_buffer) / 2**20
        cfg = work / f"{method}.yaml"
        cfg.write_text(json.dumps(mk_cfg))  # JSON is YAML
        results: dict[str, tuple[float, float, float]] = {}
        results_by_method[method] = results
        for tool in ("mergekit", "still"):
            out = work / f"out-{method}-{tool}"
            if tool == "mergekit" and method == "ties-select" and "ties" in results_by_method:  # same run as ties
                results[tool] = results_by_method["ties"]["mergekit"]
                shutil.copytree(work / "out-ties-mergekit", out)
                continue
            best = None
            for _ in range(args.repeat):
                shutil.rmtree(out, ignore_errors=True)
                cmd = [mergekit, str(cfg), str(out)] if tool == "mergekit" else [*still, *still_args, "-o", str(out)]
                r = timed(cmd)
                best = r if best is None or r[0] < best[0] else best
            assert best is not None
            results[tool] = best
        same = same_weights(work / f"out-{method}-still", work / f"out-{method}-mergekit")
        for tool, (wall, cpu, rss) in results.items():
            extra = f"{bound:9.0f}  {same}" if tool == "still" else ""
            print(f"{method:11} {tool:9} {wall:8.1f} {cpu:8.1f} {rss:12.0f}  {extra}")
        ratio = results["still"][0] / results["mergekit"][0]
        print(f"{method:11} still/mergekit wall time: {ratio:.2f}x (goal <= 0.67x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
