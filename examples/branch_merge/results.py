"""Collect the showcase's eval runs into results.json, a Markdown table and one plot.

    python examples/branch_merge/results.py --out OUT NAME...

Reads OUT/eval/NAME.jsonl (`still eval` output: its summary lines) and OUT/eval/compare-*.jsonl
(`still eval compare`), writes OUT/results.json
({"models": {NAME: {DOMAIN: {"avg_at_k", "ci95"}}}, "compare": [...], "seconds": ...}),
OUT/results.md and OUT/accuracy.png (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def summaries(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("eval") == "summary":
            out[row["benchmark"]] = {"avg_at_k": row["avg_at_k"], "ci95": row["ci95"], "k": row["k"]}
    return out


def table(models: dict[str, dict[str, dict[str, Any]]], domains: list[str]) -> str:
    head = "| model | " + " | ".join(f"{d} avg@k [95% CI]" for d in domains) + " |"
    lines = [head, "|---" * (len(domains) + 1) + "|"]
    for name, per_domain in models.items():
        cells = []
        for d in domains:
            r = per_domain[d]
            cells.append(f"{r['avg_at_k']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(models: dict[str, dict[str, dict[str, Any]]], domains: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(domains)
    for j, d in enumerate(domains):
        xs = [i + j * width for i in range(len(models))]
        acc = [m[d]["avg_at_k"] for m in models.values()]
        err = [
            [a - m[d]["ci95"][0] for a, m in zip(acc, models.values(), strict=True)],
            [m[d]["ci95"][1] - a for a, m in zip(acc, models.values(), strict=True)],
        ]
        ax.bar(xs, acc, width, yerr=err, capsize=3, label=d)
    ax.set_xticks([i + width * (len(domains) - 1) / 2 for i in range(len(models))], list(models), rotation=20)
    ax.set_ylabel("avg@k (95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(title="domain")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    models = {name: summaries(args.out / "eval" / f"{name}.jsonl") for name in args.names}
    domains = sorted({d for m in models.values() for d in m})
    compare = []
    for path in sorted((args.out / "eval").glob("compare-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            compare.append(
                {
                    "merge": path.stem.removeprefix("compare-"),
                    "branch": Path(row["a"]["model"]).name,
                    "benchmark": row["benchmark"],
                    "branch_avg_at_k": row["a"]["avg_at_k"],
                    "merge_avg_at_k": row["b"]["avg_at_k"],
                    "delta": row["delta"],
                    "ci95": row["ci95"],
                    "distinguishable": row["distinguishable"],
                }
            )
    started = float((args.out / "started").read_text())
    results = {"models": models, "compare": compare, "seconds": round(time.time() - started, 1)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = table(models, domains)
    md += "\n| merge | minus branch | on | delta [95% CI] | merge / branch |\n|---|---|---|---|---|\n"
    for c in compare:
        interval = f"{c['delta']:+.1%} [{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}]"
        kept = f"{c['merge_avg_at_k'] / c['branch_avg_at_k']:.0%}" if c["branch_avg_at_k"] else "-"
        md += f"| {c['merge']} | {c['branch']} | {c['benchmark']} | {interval} | {kept} |\n"
    md += f"\nwhole run: {results['seconds']:.0f} s\n"
    (args.out / "results.md").write_text(md)
    plotted = plot(models, domains, args.out / "accuracy.png")
    print(md + ("" if plotted else "(no plot: pip install matplotlib)\n"))


if __name__ == "__main__":
    main()
