#!/usr/bin/env bash
# The demo pipeline on the synthetic data from examples/make_sample.py.
# Usage: examples/pipeline.sh DEMO_DIR STILL [PYTHON]
# Each step prints its command line, then its one-line summary on stderr; at the end the results
# are compared with what the generator planted (truth.json).
set -euo pipefail
dir=${1:-demo-out}
still=${2:-still}
python=${3:-python3}

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
echo "== 5. grade: per query, the teacher's pass rate, mean score and CV over its responses; difficulty by pass-rate band"
run "$still" grade "$dir/4-verified.jsonl" -o "$dir/5-graded.jsonl"

echo
echo "== 6. sample: verified-correct responses only, one per query, as a math:40 / code:20 mix"
run "$still" sample --passing --per-query 1 --quota domain=math:40,code:20 --seed 7 \
  "$dir/5-graded.jsonl" -o "$dir/6-sample.jsonl"

echo
echo "== 7. sample: the queries the teacher finds hard (pass rate 0.25..0.75), a curriculum by difficulty"
run "$still" sample --pass-rate 0.25..0.75 --difficulty-weights 2=1,3=1,4=1 -n 30 --seed 7 \
  "$dir/5-graded.jsonl" -o "$dir/7-hard.jsonl"

echo
echo "demo outputs in $dir/:"
for f in "$dir"/[0-9]-[a-z]*.jsonl; do
  printf '  %-28s %6d records\n' "$(basename "$f")" "$(wc -l < "$f")"
done
echo
"$python" "$(dirname "$0")/demo_check.py" "$dir"
