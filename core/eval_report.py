"""Human-readable output of ``still eval``: a Markdown table and a PNG plot (matplotlib, optional)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

PLOT_SIZE_IN = (12.0, 4.5)
PLOT_DPI = 100  # 1200 x 450 pixels


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_report(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per (benchmark, model), then per-split rows and the provenance of each run."""
    lines = [
        "| benchmark | model | k | problems | avg@k % | 95% CI | ±sampling | pass@k % | cons@k % "
        "| truncated % | no answer % | tokens mean / p90 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        lo, hi = s["ci95"]
        tokens = s.get("tokens") or {}
        mean_t, p90_t = tokens.get("mean"), tokens.get("p90")
        tok = "-" if mean_t is None else f"{mean_t:.0f} / {p90_t:.0f}"
        passk = ", ".join(f"@{k} {_pct(v)}" for k, v in s["pass_at_k"].items())
        lines.append(
            f"| {s['benchmark']} | {s['model']} | {s['k']} | {s['n_problems']} | {_pct(s['avg_at_k'])} "
            f"| [{_pct(lo)}, {_pct(hi)}] | {_pct(s['sampling_se'])} | {passk} | {_pct(s['cons_at_k'])} "
            f"| {_pct(s['truncation_rate'])} | {_pct(s['no_answer_rate'])} | {tok} |"
        )
    for s in summaries:
        for split, values in (s.get("splits") or {}).items():
            lines.append("")
            lines.append(f"**{s['benchmark']} / {s['model']} by {split}**")
            lines.append("")
            lines.append(f"| {split} | problems | avg@k % | 95% CI |")
            lines.append("| --- | --- | --- | --- |")
            for value, row in values.items():
                lo, hi = row["ci95"]
                lines.append(f"| {value} | {row['n']} | {_pct(row['avg_at_k'])} | [{_pct(lo)}, {_pct(hi)}] |")
    lines.append("")
    lines.append("Truncated and no-answer samples are reported apart and never counted as wrong answers; ")
    lines.append("they do not count as correct either. CI: bootstrap over problems; ±sampling: within-problem SE.")
    lines.append("")
    for s in summaries:
        fp = s.get("fingerprint") or {}
        shown = {k: v for k, v in fp.items() if v not in (None, {}, [])}
        lines.append(f"- {s['benchmark']} / {s['model']}: `{shown}`")
    return "\n".join(lines) + "\n"


def plot_summaries(summaries: Sequence[dict[str, Any]], path: str | BinaryIO) -> None:
    """pass@k against k (left) and the answer-length distribution (right), as a PNG."""
    from still.core.errors import require

    require("matplotlib", "plot", "Drawing --plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_k, ax_len) = plt.subplots(1, 2, figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    for s in summaries:
        ks = [int(k) for k in s["pass_at_k"]]
        label = f"{s['benchmark']} / {s['model']}"
        ax_k.plot(ks, [100 * v for v in s["pass_at_k"].values()], marker="o", label=label)
        hist = (s.get("tokens") or {}).get("histogram")
        if hist:
            edges = [hist["start"] + i * hist["width"] for i in range(len(hist["counts"]))]
            ax_len.bar(edges, hist["counts"], width=hist["width"], align="edge", alpha=0.5, label=label)
    ax_k.set_xscale("log", base=2)
    ax_k.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_k.set_xlabel("k")
    ax_k.set_ylabel("pass@k (%)")
    ax_k.set_title("pass@k")
    ax_len.set_xlabel("answer length (tokens)")
    ax_len.set_ylabel("samples")
    ax_len.set_title("answer lengths")
    for ax in (ax_k, ax_len):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=PLOT_DPI)
    plt.close(fig)
