"""How fast `-o FILE.gz` writes at each --gzip-level, against plain output and gzip(1), in one run.

    python bench/gzip_output.py [--docs 100000] [--words 250]

`still sample -n N` (N larger than the input: every record passes, held and written at the end)
writes the same corpus to out.jsonl and out.jsonl.gz at levels 1, 6 and 9; the anchor is
`gzip -1` / `gzip -6` of the plain output (what `still ... | gzip` would cost). Prints seconds,
ratio to plain output and file size. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def timed(cmd: list[str], stdout: int | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=stdout)
    return time.perf_counter() - start


def main() -> None:
    import corpus

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=100000)
    ap.add_argument("--words", type=int, default=250)
    args = ap.parse_args()
    still = [sys.executable, "-m", "still"]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "in.jsonl")
        corpus.write(data, args.docs, args.words)
        size_mb = os.path.getsize(data) / 1e6
        print(f"{args.docs} records, {size_mb:.0f} MB")
        plain = os.path.join(tmp, "out.jsonl")
        base = timed([*still, "sample", "-q", "-n", str(10 * args.docs), data, "-o", plain])
        rows = [("still -o out.jsonl", base, os.path.getsize(plain))]
        for level in (1, 6, 9):
            out = os.path.join(tmp, f"out{level}.jsonl.gz")
            cmd = [*still, "sample", "-q", "-n", str(10 * args.docs), data, "--gzip-level", str(level), "-o", out]
            rows.append((f"still -o out.jsonl.gz --gzip-level {level}", timed(cmd), os.path.getsize(out)))
        if shutil.which("gzip"):
            for level in (1, 6):
                with open(os.path.join(tmp, f"g{level}.gz"), "wb") as sink:
                    seconds = timed(["gzip", f"-{level}", "-c", plain], stdout=sink.fileno())
                rows.append((f"gzip -{level} of the plain output (anchor)", seconds, os.path.getsize(sink.name)))
        for label, seconds, size in rows:
            print(f"  {label:<46} {seconds:6.2f} s  {seconds / base:5.2f}x plain  {size / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
