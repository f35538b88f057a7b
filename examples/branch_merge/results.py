"""Collect the showcase's eval runs into results.json, a Markdown table and one plot.

    python examples/branch_merge/results.py --out OUT NAME...

Reads OUT/eval/NAME.jsonl (`still eval` output: its summary lines) and OUT/eval/compare-*.jsonl
(`still eval compare`), writes OUT/results.json
({"models": {NAME: {DOMAIN: {"avg_at_k", "ci95"}}}, "compare": [...], "seconds": ...}),
OUT/results.md and OUT/accuracy.png (when matplotlib is installed). Stage times come from
OUT/stats/times.txt (`wall user sys target` per command, written by the Makefile's /usr/bin/time).
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


def stage_of(target: str) -> str:
    """The stage a Makefile target belongs to (models/branch-add/config.json -> model branch-add)."""
    parts = target.split("/")
    if parts[0] == "models":
        return "init models" if parts[1].endswith("-init") else "model " + parts[1]
    if parts[0] == "eval":
        return "eval " + parts[1].removesuffix(".jsonl")
    if parts[0] == "data":
        return "make_domains"
    return target.removesuffix(".jsonl")


def stage_times(path: Path) -> list[dict[str, Any]]:
    """Wall and CPU seconds per stage, in the order the stages finished."""
    stages: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) != 4 or fields[0].startswith("Command"):
            continue  # GNU time's note on a failed command; the Makefile stops there anyway
        name = stage_of(fields[3])
        row = stages.setdefault(name, {"stage": name, "wall_s": 0.0, "cpu_s": 0.0})
        row["wall_s"] = round(row["wall_s"] + float(fields[0]), 1)
        row["cpu_s"] = round(row["cpu_s"] + float(fields[1]) + float(fields[2]), 1)
    return list(stages.values())


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
    stages = stage_times(args.out / "stats" / "times.txt")
    results = {
        "models": models,
        "compare": compare,
        "seconds": round(time.time() - started, 1),
        "cpu_seconds": round(sum(st["cpu_s"] for st in stages), 1),
        "stages": stages,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = table(models, domains)
    md += "\n| merge | minus branch | on | delta [95% CI] | merge / branch |\n|---|---|---|---|---|\n"
    for c in compare:
        interval = f"{c['delta']:+.1%} [{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}]"
        kept = f"{c['merge_avg_at_k'] / c['branch_avg_at_k']:.0%}" if c["branch_avg_at_k"] else "-"
        md += f"| {c['merge']} | {c['branch']} | {c['benchmark']} | {interval} | {kept} |\n"
    md += f"\nwhole run: {results['seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU (all stages)\n"
    if stages:
        md += "\n| stage | wall s | CPU s |\n|---|---|---|\n"
        md += "".join(f"| {st['stage']} | {st['wall_s']:.1f} | {st['cpu_s']:.1f} |\n" for st in stages)
    (args.out / "results.md").write_text(md)
    plotted = plot(models, domains, args.out / "accuracy.png")
    print(md + ("" if plotted else "(no plot: pip install matplotlib)\n"))


if __name__ == "__main__":
    main()
