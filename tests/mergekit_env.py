"""mergekit 0.1.5 from PyPI in its own venv (build/mergekit-venv), for the comparison tests and bench.

The venv is created with ``--system-site-packages`` so it reuses the installed torch, and kept for
later runs. mergekit is LGPL and heavy to import: ``still`` never imports it, only these scripts
run it, in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("STILL_MERGEKIT_VENV", ROOT / "build" / "mergekit-venv"))
VERSION = "0.1.5"

# Runs several merges in one process (mergekit takes seconds to import); the seed is set per merge
# exactly as mergekit-yaml --random-seed does.
DRIVER = """
import json, sys
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for job in json.load(open(sys.argv[1])):
    options = MergeOptions(random_seed=job.get("seed"), quiet=True, write_model_card=False)
    options.apply_global_options()
    run_merge(MergeConfiguration.model_validate(job["config"]), job["out"], options=options)
"""


def python() -> Path:
    return VENV / "bin" / "python"


def ensure() -> tuple[Path | None, str]:
    """The venv's python with mergekit, creating the venv if needed; (None, why) when impossible."""
    if python().exists() and _has_mergekit():
        return python(), ""
    try:
        if not python().exists():
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True,
                           capture_output=True, timeout=300)  # fmt: skip
        proc = subprocess.run(
            [str(python()), "-m", "pip", "install", "-q", f"mergekit=={VERSION}"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot create the mergekit venv at {VENV}: {exc}"
    if proc.returncode != 0 or not _has_mergekit():
        return None, f"pip install mergekit=={VERSION} failed in {VENV}: {proc.stderr.strip()[-400:]}"
    return python(), ""


def _has_mergekit() -> bool:
    code = "import importlib.metadata as m; print(m.version('mergekit'))"
    proc = subprocess.run([str(python()), "-c", code], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == VERSION


def run_merges(jobs: list[dict[str, Any]]) -> None:
    """Run mergekit on each ``{"config": {...}, "out": DIR, "seed": N}`` in one process."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(jobs, fh)
    try:
        proc = subprocess.run([str(python()), "-c", DRIVER, fh.name], capture_output=True, text=True, timeout=900)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"mergekit failed:\n{proc.stderr[-3000:]}")


def config(
    method: str,
    base: Path | None,
    models: list[Path],
    params: dict[str, Any],
    per_model: dict[str, list[float]],
    dtype: str | None = None,
    out_dtype: str | None = None,
) -> dict[str, Any]:
    """A mergekit config: base listed first among the models where the method needs it among them."""
    entries: list[dict[str, Any]] = []
    if base is not None and method in ("slerp", "model_stock", "arcee_fusion"):
        entries.append({"model": str(base)})
    for i, m in enumerate(models):
        entry: dict[str, Any] = {"model": str(m)}
        if per_model:
            entry["parameters"] = {k: v[i] for k, v in per_model.items()}
        entries.append(entry)
    cfg: dict[str, Any] = {"merge_method": method, "models": entries}
    if base is not None:
        cfg["base_model"] = str(base)
    if params:
        cfg["parameters"] = params
    if dtype:
        cfg["dtype"] = dtype
    if out_dtype:
        cfg["out_dtype"] = out_dtype
    return cfg
