#!/usr/bin/env bash
# The demo pipeline on the synthetic data from examples/make_sample.py.
# Usage: examples/pipeline.sh DEMO_DIR STILL [PYTHON]
# Each step prints its command line, then its one-line summary on stderr; at the end the results
# are compared with what the generator planted (truth.json).
set -euo pipefail
dir=${1:-demo-out}
still=${2:-still}
python=${3:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

# print a command as it would be typed (`still` for the venv's binary), then run it
run() {
  local shown=("still" "${@:2}")
  printf '\n$ %s\n' "${shown[*]}"
  "$@"
}

echo "== 1. dedup: exact and near copies of query+response pairs"
run "$still" dedup --key query+response --stats "$dir/1-stats.json" "$dir/raw.jsonl" -o "$dir/1-unique.jsonl"

echo
echo "== 2. dedup: near-identical queries, keeping up to 4 responses per query (OpenThoughts-style)"
run "$still" dedup --key query --max-per-key 4 --clusters "$dir/2-clusters.jsonl" --stats "$dir/2-stats.json" \
  "$dir/1-unique.jsonl" -o "$dir/2-per-query.jsonl"

echo
echo "== 3. decontam: drop records that contain a question of the demo benchmark"
run "$still" decontam --against "$dir/bench.jsonl" --report "$dir/3-decontam-report.json" \
  --stats "$dir/3-stats.json" "$dir/2-per-query.jsonl" -o "$dir/3-decontam.jsonl"

echo
echo "== 4. verify: math answers (exact paths, math-verify in killable workers), code in the sandbox"
run "$still" verify --workers 2 --stats "$dir/4-stats.json" "$dir/3-decontam.jsonl" -o "$dir/4-verified.jsonl"

echo
echo "== 5. sample: verified-correct responses only, one per query, as a math:40 / code:20 mix"
run "$still" sample --passing --per-query 1 --quota domain=math:40,code:20 --seed 7 \
  "$dir/4-verified.jsonl" -o "$dir/5-sample.jsonl"

echo
echo "== 6. generate: 2 responses per query for 6 sampled queries, from a tiny RANDOM model built here"
echo "   (tests/tiny_model.py: random weights, so its answers are random noise; this shows the plumbing)"
"$python" "$here/tests/tiny_model.py" "$dir/tiny-model" > /dev/null 2>&1
head -n 6 "$dir/5-sample.jsonl" > "$dir/6-queries.jsonl"
run "$still" generate -m "$dir/tiny-model" -k 2 --max-tokens 24 --seed 7 --device cpu \
  "$dir/6-queries.jsonl" -o "$dir/6-generated.jsonl"

echo
echo "== 7. verify the generated responses (random text cut at 24 tokens: expect truncated, never correct)"
run "$still" verify "$dir/6-generated.jsonl" -o "$dir/7-generated-verified.jsonl"

echo
echo "demo outputs in $dir/:"
for f in "$dir"/[0-9]-[a-z]*.jsonl; do
  printf '  %-28s %6d records\n' "$(basename "$f")" "$(wc -l < "$f")"
done
echo
"$python" "$(dirname "$0")/demo_check.py" "$dir"
