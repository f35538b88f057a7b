"""Compare the demo pipeline's results with what examples/make_sample.py planted (truth.json).

Usage: python examples/demo_check.py DEMO_DIR. Prints one line per planted kind ("found 10/10")
and what to try next; exits 1 when something planted was missed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def main(directory: Path) -> int:
    truth = load(directory / "truth.json")
    # the planted near duplicates repeat a response under a reworded query: step 1 finds them
    step1 = load(directory / "1-stats.json")["dropped"]
    exact, near = step1.get("exact duplicate", 0), step1.get("near duplicate", 0)
    contaminated = load(directory / "3-stats.json")["dropped"].get("contaminated", 0)
    verdicts = load(directory / "4-stats.json").get("verdicts", {})
    rows = [
        ("exact duplicates found", exact, truth["exact_duplicates"]),
        ("near duplicates found", near, truth["near_duplicates"]),
        ("contaminated records found", contaminated, truth["contaminated"]),
    ]
    missed = False
    print("compared with what the generator planted:")
    for label, got, planted in rows:
        note = "" if got == planted else "  <-- differs"
        missed |= got < planted
        print(f"  {label:<28} {got}/{planted}{note}")
    print("  verdicts: " + ", ".join(f"{k} {v}" for k, v in verdicts.items()))
    print(
        f"""
try next:
  . .venv/bin/activate                      # or call .venv/bin/still
  still dedup --mark --key query {directory}/raw.jsonl | head -3          # see why a record goes
  jq -c .verify {directory}/4-verified.jsonl | sort | uniq -c | sort -rn | head   # verdicts
  make -f examples/experiment.mk RAW={directory}/raw.jsonl BENCH={directory}/bench.jsonl OUT=exp
  still COMMAND --help; docs/ has a guide per command"""
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")))
