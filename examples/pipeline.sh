#!/usr/bin/env bash
# The demo pipeline on the synthetic data from examples/make_sample.py.
# Usage: examples/pipeline.sh DEMO_DIR STILL
# Each step reads the previous step's JSONL and prints its one-line summary on stderr.
set -euo pipefail
dir=${1:-demo-out}
still=${2:-still}

echo "== 1. dedup: exact duplicate lines and near-duplicate responses (key = query+response)"
"$still" dedup --key query+response "$dir/raw.jsonl" -o "$dir/1-unique.jsonl"

echo "== 2. dedup: at most 4 responses per near-identical query (OpenThoughts-style)"
"$still" dedup --key query --max-per-key 4 --clusters "$dir/2-clusters.jsonl" \
  "$dir/1-unique.jsonl" -o "$dir/2-per-query.jsonl"

echo "== 3. decontam: drop records that contain a question of the demo benchmark (report: hit items)"
"$still" decontam --against "$dir/bench.jsonl" --report "$dir/3-decontam-report.json" \
  "$dir/2-per-query.jsonl" -o "$dir/3-decontam.jsonl"

echo "== 4. verify: math answers (exact paths, math-verify in killable workers), code in the sandbox"
"$still" verify --workers 2 "$dir/3-decontam.jsonl" -o "$dir/4-verified.jsonl"

echo "== 5. sample: verified-correct responses only, one per query, as a math:40 / code:20 mix"
"$still" sample --passing --per-query 1 --quota domain=math:40,code:20 --seed 7 \
  "$dir/4-verified.jsonl" -o "$dir/5-sample.jsonl"

echo "== 6. distill-train: a few SFT steps of a tiny random model on the selected traces (metrics on stdout)"
py="$(dirname "$still")/python"
[ -x "$py" ] || py=python3
"$py" "$(dirname "$0")/../tests/tiny_model.py" "$dir/tiny-model" > /dev/null
"$still" distill-train --model "$dir/tiny-model" --out "$dir/6-student" --max-steps 3 --log-steps 1 \
  --lr 1e-3 --max-length 1024 --truncate truncate "$dir/5-sample.jsonl" > "$dir/6-metrics.jsonl"
cat "$dir/6-metrics.jsonl"

echo
echo "demo outputs in $dir/:"
for f in "$dir"/[0-9]*.jsonl; do
  printf '  %-28s %6d records\n' "$(basename "$f")" "$(wc -l < "$f")"
done
echo "planted: $(tr -d '\n ' < "$dir/truth.json")"
